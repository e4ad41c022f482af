"""`make paper`'s driver (scripts/paper.py) on its CPU path: every requested cell, the
validation-selected iteration, a Markdown table, and a rerun that reuses finished cells."""
import json
import sys
from pathlib import Path

import pytest

from pipeline_support import make_project

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

TINY_PROTOCOL = {"description": "a seconds-long test protocol",
                 "distill": {"iterations": 4, "validate_every": 2, "batch_real": 8, "net": {"width": 8}},
                 "evaluate": {"epochs": 2, "seeds": [0, 1], "net": {"width": 8}},
                 "validation": {"per_class": 5, "epochs": 2}}


# ATOM+ beside tiny: only the encoder keys and the pool differ (make paper's + cells)
TINY_PLUS = {"description": "tiny inside a 2-member pool", "base": "tiny",
             "distill": {"encoder": "pool", "calibration": 1.0}, "pool": {"models": 2, "epochs": 1, "batch_size": 64}}
# differs from tiny in more than the encoder: refused as a + protocol
TINY_LONGER = {"description": "tiny inside a pool, longer", "base": "tiny-atomplus", "distill": {"iterations": 6}}


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", extra={"mlflow": {"enabled": False},
                                               "protocols": {"tiny": TINY_PROTOCOL, "tiny-atomplus": TINY_PLUS,
                                                             "tiny-longer": TINY_LONGER}})
    monkeypatch.chdir(root)
    from stages import download, zca
    download.main(["--dataset", "digits"])
    zca.main(["--dataset", "digits"])
    return root


def test_paper_script_runs_every_cell_and_writes_a_table(project):
    import paper
    out = project / "paper-out"
    args = ["--dataset", "digits", "--protocol", "tiny", "--ipcs", "1", "--methods", "atom", "dm",
            "--baselines", "random", "selected", "--device", "cpu", "--params", "params.yaml", "--out", str(out)]
    paper.main(args)
    for kind in ("atom", "dm", "random", "selected"):
        cell = json.loads((out / f"{kind}-ipc1.json").read_text())
        assert cell["n"] == 2 and len(cell["test"]) == 2
        assert cell["best_iteration"] in ([0, 2, 4] if kind in ("atom", "dm") else [0])
        assert cell["recipe"]["distill"]["iterations"] == 4  # the protocol's value, not the group's
    text = (out / "table.md").read_text()
    assert "protocol `tiny`" in text and all(label in text for label in ("ATOM", "DM", "random real", "selected real"))
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    paper.main(args)  # finished cells are reused, not recomputed
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == before


def test_paper_script_names_a_bad_argument(project):
    import paper
    with pytest.raises(SystemExit, match="protocol"):
        paper.main(["--dataset", "digits", "--protocol", "nope", "--params", "params.yaml"])
    with pytest.raises(SystemExit, match="methods"):
        paper.main(["--dataset", "digits", "--protocol", "tiny", "--methods", "kip", "--params", "params.yaml"])


def test_paper_script_runs_cells_in_parallel_with_overrides_and_marks_a_failure(project):
    import paper
    out = project / "paper-par"
    base = ["--dataset", "digits", "--protocol", "tiny", "--ipcs", "1", "--device", "cpu",
            "--params", "params.yaml", "--jobs", "2"]
    paper.main(base + ["--methods", "atom", "--baselines", "random", "--out", str(out),
                       "--set", "distill.iterations=2", "--set", "distill.validate_every=1"])
    cell = json.loads((out / "atom-ipc1.json").read_text())
    assert cell["recipe"]["distill"]["iterations"] == 2 and cell["best_iteration"] in (0, 1, 2)
    assert cell["overrides"] == ["distill.iterations=2", "distill.validate_every=1"]
    assert (out / "logs" / "atom-ipc1.log").is_file() and (out / "random-ipc1.json").is_file()
    text = (out / "table.md").read_text()
    assert "`distill.iterations=2`" in text and "| atom IPC 1 | 2 |" in text
    # a cell whose distillation diverges fails alone; the table marks it and the run says so
    bad = project / "paper-bad"
    with pytest.raises(SystemExit, match="cells failed: dm-ipc1"):
        paper.main(base + ["--methods", "dm", "--baselines", "random", "--out", str(bad),
                           "--set", "distill.lr_img=1.0e+30"])
    assert (bad / "random-ipc1.json").is_file() and not (bad / "dm-ipc1.json").exists()
    assert "failed" in (bad / "table.md").read_text()
    assert "FloatingPointError" in (bad / "logs" / "dm-ipc1.log").read_text()


def test_paper_script_names_a_bad_override(project):
    import paper
    with pytest.raises(SystemExit, match="distill.KEY=VALUE"):
        paper.main(["--dataset", "digits", "--protocol", "tiny", "--params", "params.yaml", "--set", "iterations=3"])
    with pytest.raises(SystemExit, match="--jobs"):
        paper.main(["--dataset", "digits", "--protocol", "tiny", "--params", "params.yaml", "--jobs", "0"])


def test_report_only_tables_the_finished_cells_and_computes_none(project):
    import paper
    out = project / "paper-rep"
    base = ["--dataset", "digits", "--protocol", "tiny", "--ipcs", "1", "--device", "cpu", "--params", "params.yaml",
            "--out", str(out)]
    paper.main(base + ["--methods", "--baselines", "random"])
    paper.main(base + ["--methods", "dm", "--baselines", "random", "--report-only"])
    assert sorted(p.name for p in out.glob("*.json")) == ["random-ipc1.json"]
    rows = {line.split(" | ")[0]: line for line in (out / "table.md").read_text().splitlines()}
    assert rows["| DM"].endswith("| - |") and "± " in rows["| random real"]


def test_make_paper_default_protocol_is_a_named_protocol():
    import re
    import paper
    import yaml
    protocols = yaml.safe_load((ROOT / "params.yaml").read_text())["protocols"]
    make_default = re.search(r"^PROTOCOL\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert make_default in protocols
    assert paper.parser().get_default("protocol") == make_default


def test_cpu_wide_protocol_is_the_cpu_protocol_with_a_wider_distillation_network():
    # docs/history/notebook.md section 2g compares the two protocols as a change of width alone: the recipes
    # the ablation cells run under them (cpu-wide names cpu as its base) differ in nothing else
    import ablation
    from stages.common.params import load_params
    params = load_params(ROOT / "params.yaml")
    cpu, wide = (ablation.recipe_for(params, "cifar10-jpeg", "atom", proto) for proto in ("cpu", "cpu-wide"))
    assert (cpu["distill"]["net"]["width"], wide["distill"]["net"]["width"]) == (64, 128)
    assert cpu["evaluate"]["net"]["width"] == wide["evaluate"]["net"]["width"] == 64
    wide["distill"]["net"]["width"] = 64
    assert wide == cpu


def test_ablation_report_reads_paper_cells(tmp_path, capsys):
    import ablation_report
    cell = {"method": "atom", "ipc": 10, "overrides": ["distill.iterations=4"], "val_curve": [[0, 40.0], [4, 45.5]],
            "best_iteration": 4, "mean": 46.0, "std": 0.5, "n": 2, "test": [45.5, 46.5], "seconds": 60.0}
    (tmp_path / "atom-ipc10.json").write_text(json.dumps(cell))  # scripts/paper.py writes no "name"
    ablation_report.main([str(tmp_path), "--figure", str(tmp_path / "curves.png")])
    out = capsys.readouterr().out
    assert "| atom | 10 | iterations=4 | 0: 40.0, 4: 45.5 | 4 | 46.00 ± 0.50 (2) |" in out
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_ablation_report_keeps_shared_key_names_whole():
    import ablation_report
    keys = ablation_report.short_keys(["distill.net.norm=batchnorm", "evaluate.net.norm=batchnorm",
                                       "distill.loss.p_c=8.0"])
    assert keys == [("distill.net.norm", "batchnorm"), ("evaluate.net.norm", "batchnorm"), ("p_c", "8.0")]


def test_ablation_report_pools_the_cells_of_one_recipe_over_distillation_seeds(capsys):
    import ablation_report
    import statistics

    def cell(overrides, test, seed=0, **recipe):
        return {"method": "atom", "ipc": 1, "name": "x", "overrides": overrides, "val_curve": [[0, 1.0]],
                "best_iteration": 0, "mean": statistics.fmean(test), "std": statistics.pstdev(test),
                "n": len(test), "test": test, "seconds": 1.0, "recipe": {"distill": dict(recipe, seed=seed)}}
    cells = [cell(["distill.loss.mixing=concat"], [30.0, 31.0, 32.0], mixing="concat"),
             cell(["distill.loss.mixing=concat", "distill.seed=1"], [34.0, 35.0, 36.0], seed=1, mixing="concat"),
             # written after concat became the default: other overrides, the same resolved recipe
             cell(["distill.seed=2"], [33.0], seed=2, mixing="concat"),
             cell(["distill.loss.p_s=2.0"], [20.0, 20.0], p_s=2.0),
             # the same overrides on other defaults: another resolved recipe
             cell(["distill.loss.p_s=2.0"], [25.0], seed=1, p_s=2.0, factor=2)]
    table = ablation_report.pooled(cells).splitlines()
    everything = [30.0, 31.0, 32.0, 34.0, 35.0, 36.0, 33.0]
    assert (f"| atom | 1 | mixing=concat | 0: 31.00, 1: 35.00, 2: 33.00 | {statistics.fmean(everything):.2f} ± "
            f"{statistics.pstdev(everything):.2f} (7) |") in table
    assert "| atom | 1 | p_s=2.0 | 0: 20.00 | 20.00 ± 0.00 (2) |" in table
    assert "| atom | 1 | p_s=2.0 | 1: 25.00 | 25.00 ± 0.00 (1) |" in table
    assert len(table) == 5  # header, rule, three recipes
    # cells without a resolved recipe (scripts/paper.py's) pool by their overrides
    bare = [{k: v for k, v in c.items() if k != "recipe"} for c in cells[:2]]
    assert "(6) |" in ablation_report.pooled(bare).splitlines()[2]


def test_ablation_crosscheck_scores_the_kept_set_both_ways_without_changing_the_choice(project):
    import ablation
    import ablation_report
    from atom.io import load_tensors
    base = ["--dataset", "digits", "--params", str(project / "params.yaml"), "--protocol", "tiny", "--method", "atom",
            "--ipc", "1", "--out", str(project / "abl")]
    with pytest.raises(ValueError, match="validation.per_class: an ablation cell needs a validation split"):
        ablation.main(base + ["--name", "nosplit", "--set", "validation.per_class=0", "--crosscheck"])
    ablation.main(base + ["--name", "plain"])
    ablation.main(base + ["--name", "xc", "--crosscheck", "--save", str(project / "kept.pt")])
    plain, xc = (json.loads((project / "abl" / f"atom-ipc1-{n}.json").read_text()) for n in ("plain", "xc"))
    # the same seed gives the same curve, choice and test result: the cross-check only adds
    assert xc["val_curve"] == plain["val_curve"] and xc["best_iteration"] == plain["best_iteration"]
    assert xc["test"] == plain["test"] and "crosscheck" not in plain
    by_eval, by_scorer = xc["crosscheck"]["validation_by_evaluation"], xc["crosscheck"]["test_by_scorer"]
    assert by_eval["seeds"] == TINY_PROTOCOL["evaluate"]["seeds"] and by_eval["n"] == 2
    assert by_scorer["seeds"] == [0] and by_scorer["n"] == 1  # params.yaml's validation.seeds
    assert all(0.0 <= v <= 100.0 for v in by_eval["per_seed"] + by_scorer["per_seed"])
    kept = load_tensors(project / "kept.pt")
    assert kept["images"].shape[0] == kept["labels"].numel() == 10  # ipc 1, ten digit classes
    assert sorted(kept["labels"].tolist()) == list(range(10))
    table = ablation_report.crosschecked([plain, xc]).splitlines()
    assert len(table) == 3  # header, rule, the one cross-checked cell
    kept_score = dict((int(i), a) for i, a in xc["val_curve"])[xc["best_iteration"]]
    assert table[2].startswith(f"| atom | 1 | - | {kept_score:.2f} | {by_eval['mean']:.2f} ± ")


def test_ablation_report_orders_distillation_seeds_by_value():
    import ablation_report
    cells = [{"method": "dm", "ipc": 1, "name": "x", "overrides": [f"distill.seed={s}"], "mean": float(s),
              "test": [float(s)]} for s in (10, 2, 0)]
    assert "| 0: 0.00, 2: 2.00, 10: 10.00 |" in ablation_report.pooled(cells)


def test_ablation_report_reads_several_folders_and_refuses_to_pool_a_set_twice(tmp_path, capsys):
    import ablation_report
    cell = {"method": "dm", "ipc": 1, "overrides": [], "val_curve": [[0, 20.0]], "best_iteration": 0,
            "mean": 30.0, "std": 0.0, "n": 1, "test": [30.0], "seconds": 1.0, "recipe": {"distill": {"seed": 0}}}
    for folder, name in (("a", "first"), ("b", "rerun")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / f"dm-ipc1-{name}.json").write_text(json.dumps(dict(cell, name=name)))
    ablation_report.main([str(tmp_path / "a"), str(tmp_path / "b")])
    assert capsys.readouterr().out.count("| dm | 1 | - | 0: 20.0 | 0 | 30.00") == 2  # one row per folder's cell
    with pytest.raises(SystemExit, match="dm-ipc1-first and dm-ipc1-rerun ran one recipe with distillation seed 0"):
        ablation_report.main([str(tmp_path / "a"), str(tmp_path / "b"), "--pool"])
    ablation_report.main([str(tmp_path / "a"), "--pool"])
    assert "| dm | 1 | - | 0: 30.00 | 30.00 ± 0.00 (1) |" in capsys.readouterr().out


def test_ablation_report_pairs_methods_by_distillation_seed():
    import ablation_report
    import statistics
    from scipy.stats import t

    def cell(method, seed, mean, ipc=10, **distill):
        return {"method": method, "ipc": ipc, "name": "x", "overrides": [f"distill.seed={seed}"], "mean": mean,
                "test": [mean], "recipe": {"distill": dict(distill, seed=seed, factor=distill.get("factor", 2))}}
    atom = [cell("atom", s, m, loss={"mixing": "concat"}) for s, m in ((0, 47.0), (1, 48.0), (2, 47.5))]
    dm = [cell("dm", s, m, loss={"mixing": "sum"}) for s, m in ((2, 47.0), (0, 47.5), (1, 47.0))]
    others = [cell("datadam", 0, 50.0, factor=1), cell("datadam", 1, 50.0, factor=1),  # another recipe
              cell("datadam", 0, 40.0, ipc=1), cell("datadam", 1, 40.0, ipc=1),       # another IPC
              cell("random", 0, 30.0)]                                                 # one seed only
    table = ablation_report.paired(dm + others + atom).splitlines()
    assert len(table) == 3  # header, rule, atom against dm: nothing else shares a recipe and two seeds
    d = [-0.5, 1.0, 0.5]  # atom - dm at seeds 0, 1, 2: the first method of the paper's order comes first
    m, sd = statistics.fmean(d), statistics.stdev(d)
    half = t.ppf(0.975, 2) * sd / 3 ** 0.5
    assert table[2] == (f"| 10 | atom (-) | dm (-) | 0: -0.50, 1: +1.00, 2: +0.50 | {m:+.2f} ± {sd:.2f} (3) | "
                        f"[{m - half:+.2f}, {m + half:+.2f}] |")
    # a rerun of one seed would pair a set with itself: refused, as --pool refuses it
    with pytest.raises(SystemExit, match="ran one recipe with distillation seed 0"):
        ablation_report.paired(atom + dm + [dict(atom[0], name="rerun")])


def test_ablation_report_pairs_one_method_across_encoder_settings_only():
    # ATOM inside the pool with and without calibration, and ATOM with random encoders: three
    # pairs of one method; two cells of one encoder setting under other names never pair
    import ablation_report

    def cell(seed, mean, **distill):
        return {"method": "atom", "ipc": 1, "name": "x", "mean": mean, "test": [mean],
                "overrides": [f"distill.seed={seed}"] + [f"distill.{k}={v}" for k, v in distill.items()],
                "recipe": {"distill": dict(distill, seed=seed)}}
    plain = [cell(s, 34.0 + s) for s in (0, 1)]
    pool = [cell(s, 33.0 + s, encoder="pool") for s in (0, 1)]
    cal = [cell(s, 35.0 + s, encoder="pool", calibration=10.0) for s in (0, 1)]
    rows = ablation_report.paired(plain + pool + cal).splitlines()[2:]
    pairs = [tuple(r.split(" | ")[1:3]) for r in rows]
    assert pairs == [("atom (encoder=pool, calibration=10.0)", "atom (encoder=pool)"),
                     ("atom (encoder=pool, calibration=10.0)", "atom (-)"),
                     ("atom (encoder=pool)", "atom (-)")], rows
    assert rows[0].split(" | ")[4] == "+2.00 ± 0.00 (2)" and rows[2].split(" | ")[4] == "-1.00 ± 0.00 (2)"


def test_ablation_report_names_a_cells_protocol_where_it_is_not_the_usual_one():
    # a cell's overrides are relative to its own protocol: seed=1 under cpu and seed=1 under
    # cpu-wide are different recipes and must not read alike
    import ablation_report

    def cell(protocol, width, seed):
        return {"method": "dm", "ipc": 10, "name": f"w{width}-{seed}", "protocol": protocol,
                "overrides": [f"distill.seed={seed}"] + ([] if protocol == "cpu-wide" or width == 64 else
                                                         ["distill.net.width=128"]),
                "val_curve": [[0, 40.0]], "best_iteration": 0, "mean": 47.0, "std": 0.0, "n": 1, "test": [47.0],
                "seconds": 60.0, "recipe": {"distill": {"seed": seed, "net": {"width": width}}}}
    cells = [cell("cpu", 64, 1), cell("cpu", 64, 2), cell("cpu", 128, 0), cell("cpu-wide", 128, 1)]
    labels = [line.split(" | ")[2] for line in ablation_report.rows(cells).splitlines()[2:]]
    assert labels == ["seed=1", "seed=2", "seed=0, width=128", "protocol=cpu-wide, seed=1"]
    pooled = ablation_report.pooled(cells)  # one recipe: width 128 under cpu and under cpu-wide
    assert "| dm | 10 | width=128 | 0: 47.00, 1: 47.00 | 47.00 ± 0.00 (2) |" in pooled
    assert ablation_report.usual_protocol([{"protocol": None}]) is None


def test_paper_script_adds_atomplus_cells_that_differ_from_atom_only_in_the_encoder(project):
    import paper
    out = project / "paper-plus"
    args = ["--dataset", "digits", "--protocol", "tiny", "--ipcs", "1", "--methods", "atom", "--baselines",
            "--plus", "atom", "--device", "cpu", "--params", "params.yaml", "--out", str(out)]
    paper.main(args)  # --plus-protocol defaults to tiny-atomplus
    atom, plus = (json.loads((out / f"{kind}-ipc1.json").read_text()) for kind in ("atom", "atomplus"))
    assert plus["method"] == "atom" and plus["protocol"] == "tiny-atomplus"
    assert plus["recipe"]["distill"]["encoder"] == "pool" and plus["recipe"]["distill"]["calibration"] == 1.0
    assert plus["pool"]["members"] == 2 and "pool" not in atom
    for sec in ("distill", "evaluate", "validation"):  # nothing else differs: the cells compare the encoder alone
        strip = lambda r: {k: v for k, v in r[sec].items() if k not in paper.ENCODER_KEYS}  # noqa: E731
        assert strip(plus["recipe"]) == strip(atom["recipe"]), sec
    # the pool saw the training part only: the validation split (5 per class) is carved first
    from atom.io import load_tensors
    train = load_tensors(project / "data" / "prepared" / "digits.pt")["train_labels"]
    assert plus["pool"]["images"] == train.numel() - 5 * 10
    text = (out / "table.md").read_text()
    assert "| ATOM+ (trained encoders + calibration) | " in text and "protocol `tiny-atomplus`" in text
    assert "Pool (pool.pt): 2 ConvNets x 1 epochs" in text
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
    paper.main(args)  # cells and the pool are reused
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file() and p.name != "table.md"} == \
        {k: v for k, v in before.items() if k != "table.md"}
    # in parallel, each worker reads the pool trained once by the parent
    par = project / "paper-plus-par"
    paper.main(args[:-1] + [str(par), "--jobs", "2"])
    from atom.pool import EncoderPool
    assert EncoderPool.load_file(par / "pool.pt").fingerprint == \
        json.loads((par / "atomplus-ipc1.json").read_text())["pool"]["fingerprint"]


def test_paper_script_refuses_a_plus_protocol_that_changes_more_than_the_encoder(project):
    import paper
    base = ["--dataset", "digits", "--protocol", "tiny", "--ipcs", "1", "--methods", "atom", "--baselines",
            "--device", "cpu", "--params", "params.yaml", "--out", str(project / "nope"), "--plus", "atom"]
    with pytest.raises(SystemExit, match="differs from --protocol tiny in distill.iterations"):
        paper.main(base + ["--plus-protocol", "tiny-longer"])
    with pytest.raises(SystemExit, match="random encoders and no calibration"):
        paper.main(base + ["--plus-protocol", "tiny"])
    with pytest.raises(SystemExit, match="'parent-atomplus' is not a key of protocols"):
        paper.main(base[:3] + ["parent"] + base[4:])
    with pytest.raises(SystemExit, match="--plus: unknown method 'kip'"):
        paper.main(base[:-1] + ["kip"])
    with pytest.raises(SystemExit, match="--pool: missing.pt: not found"):
        paper.main(base + ["--pool", "missing.pt"])
    assert not (project / "nope").exists()  # refused before any compute or write
