"""The test set stays out of every choice: distillation never reads it, the validation split is
carved from the training images only, and baselines draw from the same training part."""
import pytest
import torch

import atom.io
from atom.validation import carve
from pipeline_support import make_project

TEST_KEYS = ("test_images", "test_labels")


class GuardedSet(dict):
    """A prepared dataset whose test tensors raise when anything reads them."""

    def __getitem__(self, key):
        if key in TEST_KEYS:
            raise AssertionError(f"the test set was read: {key}")
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in TEST_KEYS:
            raise AssertionError(f"the test set was read: {key}")
        return super().get(key, default)

    def values(self):
        raise AssertionError("the test set was read: values()")

    def items(self):
        raise AssertionError("the test set was read: items()")


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", extra={"mlflow": {"enabled": False},
                                                "validation": {"per_class": 5, "epochs": 2},
                                                "distill": {"validate_every": 2}})
    monkeypatch.chdir(root)
    from stages import download, zca
    download.main(["--dataset", "digits"])
    zca.main(["--dataset", "digits"])
    return root


def test_the_guard_trips_when_the_test_set_is_read():
    guarded = GuardedSet(train_images=1, test_images=2)
    assert guarded["train_images"] == 1
    with pytest.raises(AssertionError, match="test set was read"):
        guarded["test_images"]


def test_distill_stage_never_reads_the_test_set(project, monkeypatch):
    real_load = atom.io.load_tensors
    monkeypatch.setattr(atom.io, "load_tensors",
                        lambda path, *a, **k: GuardedSet(real_load(path, *a, **k)) if str(path).endswith("digits.pt")
                        else real_load(path, *a, **k))
    from stages import distill
    distill.main(["--dataset", "digits", "--method", "atom", "--ipc", "1"])
    out = real_load(project / "results/distill/digits/atom/ipc1/synthetic.pt")
    assert out["images"].shape[0] == 10
    curve = (project / "results/distill/digits/atom/ipc1/val_curve.csv").read_text().splitlines()
    assert curve[0] == "iteration,accuracy" and [int(r.split(",")[0]) for r in curve[1:]] == [0, 2, 4]
    assert out["iteration"] in (0, 2, 4)


def test_validation_split_comes_from_training_images_only(project):
    prep = atom.io.load_tensors(project / "data/prepared/digits.pt")
    x, y = prep["train_images"], prep["train_labels"]
    tx, ty, vx, vy = carve(x, y, 5, 0, 10)
    assert tx.shape[0] + vx.shape[0] == x.shape[0]
    assert torch.equal(torch.bincount(vy, minlength=10), torch.full((10,), 5))
    rows = {tuple(r.tolist()) for r in x.flatten(1)}
    train_rows = [tuple(r.tolist()) for r in tx.flatten(1)]
    assert all(tuple(r.tolist()) in rows for r in vx.flatten(1))  # validation images are training images
    # and distillation's pool is the rest: no validation index is in it (rows can repeat in digits,
    # so compare multiplicities)
    from collections import Counter
    assert Counter(train_rows) + Counter(tuple(r.tolist()) for r in vx.flatten(1)) == Counter(
        tuple(r.tolist()) for r in x.flatten(1))


@pytest.mark.parametrize("kind", ["random", "selected"])
def test_baselines_draw_from_distillations_training_part(project, kind):
    from stages import evaluate
    evaluate.main(["--dataset", "digits", "--method", kind, "--ipc", "2"])
    import json
    m = json.loads((project / f"results/evaluate/digits/{kind}/ipc2/metrics.json").read_text())
    assert m["n_train"] == 20 and m["n"] == len(m["per_seed"])


def test_selected_baseline_is_distillations_start_with_multi_formation(project):
    """With distill.factor 2 distillation starts from ipc mosaics of 4 selected images per class;
    the selected baseline must train on exactly that start, decoded (ipc * 4 images per class)."""
    import json

    import yaml
    from stages import evaluate
    p = yaml.safe_load((project / "params.yaml").read_text())
    p["datasets"]["digits"]["distill"]["factor"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    evaluate.main(["--dataset", "digits", "--method", "selected", "--ipc", "2"])
    m = json.loads((project / "results/evaluate/digits/selected/ipc2/metrics.json").read_text())
    assert m["n_train"] == 2 * 4 * 10
