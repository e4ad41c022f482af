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
