"""Packaging: the wheel is the library; the pipeline's tools and the SLURM plugin are extras."""
from __future__ import annotations

import re
import subprocess
import tomllib

from pipeline_support import ROOT


def test_the_wheel_holds_the_library_and_the_tools_are_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["tool"]["setuptools"]["packages"]["find"]["include"] == ["atom", "atom.*"]
    names = lambda reqs: {re.split(r"[<>=!~\[; ]", r)[0].lower() for r in reqs}  # noqa: E731
    core = names(meta["project"]["dependencies"])
    extras = meta["project"]["optional-dependencies"]
    assert {"torch", "safetensors"} <= core and not core & {"snakemake", "dvc", "mlflow", "pyyaml", "jsonschema"}
    assert {"snakemake", "dvc", "mlflow", "pyyaml", "jsonschema"} <= names(extras["pipeline"])
    (plugin,) = extras["slurm"]
    assert plugin.startswith("snakemake-executor-plugin-slurm==")  # pinned
    assert ".[dev,pipeline,slurm]" in (ROOT / "Makefile").read_text()  # make test dry-runs the SLURM profile


def test_make_slurm_without_the_plugin_says_how_to_install_it_in_one_line(tmp_path):
    # the recipe's check, run with an interpreter that lacks the plugin (make -n prints it)
    recipe = subprocess.run(["make", "-n", "-s", "slurm", "STAMP=", f"PY={tmp_path / 'python'}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60).stdout
    check = next(line for line in recipe.splitlines() if "snakemake_executor_plugin_slurm" in line)
    (tmp_path / "python").write_text("#!/bin/sh\nexit 1\n")  # `import` fails
    (tmp_path / "python").chmod(0o755)
    res = subprocess.run(["sh", "-c", check], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install -e '.[slurm]'" in lines[0], res.stderr
