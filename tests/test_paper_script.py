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


@pytest.fixture
def project(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p", extra={"mlflow": {"enabled": False}, "protocols": {"tiny": TINY_PROTOCOL}})
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
