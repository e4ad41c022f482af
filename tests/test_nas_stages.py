"""The crossarch, nas and nas_merge stages on a tiny digits project: merged shards give the
same candidates and correlations as one unsharded job; the merge refuses missing or stale
shards; crossarch writes one result per set and architecture."""
from __future__ import annotations

import json

import pytest
import yaml

from pipeline_support import make_project
from stages import crossarch, distill, download, nas, nas_merge, zca

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("nas") / "p", {"mlflow": {"enabled": False}})
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    for main, argv in ((download.main, []), (zca.main, []), (distill.main, ["--method", "atom", "--ipc", "1"])):
        main(["--dataset", "digits", *argv])
    yield root
    mp.undo()


def _set_params(root, **nas_over):
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["nas"].update(nas_over)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def _search(root, shards: list[int]) -> dict:
    _set_params(root, shards=shards, sample=4)
    for i in shards:
        nas.main(["--dataset", "digits", "--shard", str(i)])
    nas_merge.main(["--dataset", "digits"])
    rows = []
    for i in shards:
        rows += json.loads((root / f"results/nas/digits/shard{i}.json").read_text())["rows"]
    return {"metrics": json.loads((root / "results/nas_merge/digits/metrics.json").read_text()), "rows": rows}


def test_merged_shards_equal_the_unsharded_search(project):
    one = _search(project, [0])
    three = _search(project, [0, 1, 2])
    assert len(one["rows"]) == len(three["rows"]) == 4
    assert sorted(r["index"] for r in three["rows"]) == [r["index"] for r in one["rows"]]
    proxies = one["metrics"]["proxies"]
    assert set(proxies) == {"atom/ipc1", "random/ipc1"} == set(three["metrics"]["proxies"])
    for name, v in proxies.items():
        w = three["metrics"]["proxies"][name]
        assert (v["spearman"], v["kendall"]) == (w["spearman"], w["kendall"]), name
        assert -1 <= v["spearman"] <= 1 and -1 <= v["kendall"] <= 1
        assert (v["picked"], v["best"]) == (w["picked"], w["best"]), name
        assert v["best"]["full_val_accuracy"] >= v["picked"]["full_val_accuracy"]
    by_index = {r["index"]: r for r in one["rows"]}
    for r in three["rows"]:  # a candidate's numbers depend on it and the sets only
        for name, s in r["sets"].items():
            assert s["val_accuracy"] == by_index[r["index"]]["sets"][name]["val_accuracy"]
    csv = (project / "results/nas_merge/digits/candidates.csv").read_text().splitlines()
    assert len(csv) == 1 + 4 * 3  # full, atom/ipc1, random/ipc1 per candidate
    assert (project / "results/nas_merge/digits/scatter.png").stat().st_size > 0


def test_merge_refuses_missing_and_stale_shards(project):
    _search(project, [0, 1])
    (project / "results/nas/digits/shard1.json").unlink()
    with pytest.raises(RuntimeError, match=r"shard1.json: not found; run the nas stage \(python -m stages.nas "
                                           r"--dataset digits --shard 1\) first"):
        nas_merge.main(["--dataset", "digits"])
    nas.main(["--dataset", "digits", "--shard", "1"])
    _set_params(project, proxy_epochs=3)
    with pytest.raises(ValueError, match="proxy_epochs"):
        nas_merge.main(["--dataset", "digits"])
    with pytest.raises(ValueError, match="--shard: 5"):
        nas.main(["--dataset", "digits", "--shard", "5"])
    _set_params(project, proxy_epochs=2)


def test_crossarch_scores_every_set_on_every_architecture(project):
    crossarch.main(["--dataset", "digits", "--ipc", "1"])
    m = json.loads((project / "results/crossarch/digits/ipc1/metrics.json").read_text())
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert m["sets"] == ["atom", "random"] and m["archs"] == params["crossarch"]["archs"]
    for name in m["sets"]:
        for arch in m["archs"]:
            r = m["results"][name][arch]
            assert r["n"] == len(r["per_seed"]) == len(params["crossarch"]["seeds"])
            assert 0 <= r["mean"] <= 100 and r["std"] >= 0
    with pytest.raises(ValueError, match="crossarch.ipcs"):
        crossarch.main(["--dataset", "digits", "--ipc", "3"])


def test_crossarch_leaves_out_architectures_that_cannot_learn_on_8x8_digits(project):
    # VGG-11 and ResNet-18 normalise 1x1 maps on 8x8 inputs (instance norm): chance accuracy,
    # so they are left out with the reason, and the report prints the reason, not the column
    from stages import report

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["crossarch"].update(archs=["convnet", "vgg11", "resnet18"], epochs=1, seeds=[0])
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        crossarch.main(["--dataset", "digits", "--ipc", "1"])
        m = json.loads((project / "results/crossarch/digits/ipc1/metrics.json").read_text())
    finally:
        params["crossarch"].update(archs=["convnet", "alexnet"], epochs=2, seeds=[0, 1])
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert m["archs"] == ["convnet"] and set(m["skipped"]) == {"vgg11", "resnet18"}
    assert all("1x1" in why for why in m["skipped"].values())
    assert set(m["results"]["atom"]) == {"convnet"}
    nas = {"candidates": 0, "sample": 0, "seed": 0, "proxy_epochs": 0, "full_epochs": 0, "proxies": {}}
    text = "\n".join(report.tables_markdown({"crossarch": [m], "nas": nas}, {}, 2))
    assert "| set | ConvNet |" in text and "VGG-11 left out: on 8x8 inputs" in text
    assert "ResNet-18 left out" in text and "| VGG-11" not in text


def test_single_pixel_norms_matches_the_architectures_depth():
    from atom.networks import single_pixel_norms

    assert single_pixel_norms(1, 10, 8, arch="vgg11", norm="instancenorm") > 0
    assert single_pixel_norms(3, 10, 32, arch="vgg11", norm="instancenorm") == 0
    assert single_pixel_norms(1, 10, 8, arch="resnet18", norm="instancenorm") > 0
    assert single_pixel_norms(1, 10, 16, arch="resnet18", norm="instancenorm") == 0
    assert single_pixel_norms(1, 10, 8, arch="vgg11", norm="batchnorm") == 0  # batch statistics
    assert single_pixel_norms(1, 10, 8, arch="convnet", depth=3, width=8, norm="instancenorm", act="relu",
                              pool="avg") == 0
