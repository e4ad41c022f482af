"""params.yaml and its schema: complete, described, and strict enough to stop bad runs early."""
from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline_support import ROOT, make_project, project_env, tiny_params, tool
from stages.common.params import ParamsError, distill_kwargs, evaluate_settings, load_params, section, stage_params, validate_params


@pytest.fixture(scope="module")
def params():
    return load_params(ROOT / "params.yaml")


def _walk(schema, where="schema"):
    """Yield (where, subschema) for every property schema."""
    if isinstance(schema, dict):
        for name, sub in (schema.get("properties") or {}).items():
            yield f"{where}.{name}", sub
        for key, sub in schema.items():
            if key in ("properties", "$defs"):
                for name, s in sub.items():
                    yield from _walk(s, f"{where}.{name}")
            elif isinstance(sub, (dict, list)) and key not in ("default", "enum"):
                yield from _walk(sub, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, s in enumerate(schema):
            yield from _walk(s, f"{where}[{i}]")


def test_every_schema_key_is_described_and_typed():
    schema = yaml.safe_load((ROOT / "schemas/params.schema.yaml").read_text())
    for where, sub in _walk(schema):
        if set(sub) <= {"required", "properties"}:  # the `required` additions inside allOf
            continue
        assert "description" in sub or "$ref" in sub, f"{where}: no description"
        assert {"type", "enum", "$ref", "allOf", "anyOf"} & set(sub), f"{where}: no type"


def test_default_and_tiny_params_are_valid(params):
    validate_params(tiny_params())
    assert params["experiment"]["methods"] == ["atom", "datadam", "dm"]
    assert params["experiment"]["baselines"] == ["random", "selected", "full"] and params["experiment"]["ipcs"] == [1, 10]
    # every dataset group validates once merged into the sections it overrides
    for name in params["datasets"]:
        assert section(params, "distill", name)["iterations"] >= 1
        seeds, cfg, batched = evaluate_settings(params, name, "atom")
        assert seeds and cfg["epochs"] >= 1 and batched in (True, False, "auto")


def test_dataset_groups_override_only_their_dataset(params):
    tiny = distill_kwargs(params, "tinyimagenet", "atom")
    assert tiny["net"]["depth"] == 4 and tiny["net"]["width"] == params["distill"]["net"]["width"]
    assert tiny["loss"]["lam"] == 0.02 and tiny["loss"]["p_c"] == params["distill"]["loss"]["atom"]["p_c"]
    assert distill_kwargs(params, "digits", "atom")["net"]["depth"] == 3
    assert distill_kwargs(params, "digits", "dm")["loss"] == params["distill"]["loss"]["dm"]
    assert params["datasets"]["cifar10"]["preprocess"]["zca"] and not params["datasets"]["tinyimagenet"]["preprocess"]["zca"]
    seeds, full, _ = evaluate_settings(params, "digits", "full")
    merged = section(params, "evaluate", "digits")["full"]  # the group's protocol (smoke) included
    assert full["epochs"] == merged["epochs"] and seeds == merged["seeds"]


@pytest.mark.parametrize("method", ["atom", "datadam", "dm"])
def test_cifar10_groups_share_one_recipe_and_a_loss_override_keeps_the_other_terms(params, method):
    # cifar10-jpeg is CIFAR-10's content in another container: the recipe chosen on it must be
    # the one the cifar10 group runs
    jpeg, cifar = distill_kwargs(params, "cifar10-jpeg", method), distill_kwargs(params, "cifar10", method)
    assert jpeg == cifar
    assert all(section(params, sec, "cifar10-jpeg") == section(params, sec, "cifar10") for sec in ("evaluate", "validation"))
    base = params["distill"]["loss"][method]
    named = params["datasets"]["cifar10"]["distill"].get("loss", {}).get(method, {})
    assert set(cifar["loss"]) == set(base)
    assert {k: v for k, v in cifar["loss"].items() if k not in named} == {k: v for k, v in base.items() if k not in named}
    assert all(cifar["loss"][k] == v for k, v in named.items())


def test_a_protocol_base_applies_first_and_chains(params):
    p = copy.deepcopy(params)
    p["protocols"].update(
        a={"description": "a", "distill": {"iterations": 7, "batch_real": 5}, "evaluate": {"epochs": 9}},
        b={"description": "b", "base": "a", "distill": {"iterations": 11}},
        c={"description": "c", "base": "b", "distill": {"net": {"width": 16}}})
    p["datasets"]["digits"]["protocol"] = "c"
    written = copy.deepcopy(p["protocols"])
    validate_params(p)
    d, e = section(p, "distill", "digits"), section(p, "evaluate", "digits")
    assert (d["iterations"], d["batch_real"], d["net"]["width"]) == (11, 5, 16)  # nearest protocol wins per key
    assert d["net"]["depth"] == params["distill"]["net"]["depth"] and e["epochs"] == 9
    assert p["protocols"] == written  # resolving leaves the written protocols alone


@pytest.mark.parametrize("bases, words", [
    ({"a": "nope"}, ["protocols.a.base", "'nope' is not a key of `protocols`"]),
    ({"a": "b", "b": "a"}, ["protocols.a.base", "cycle (a -> b -> a)"]),
    ({"a": "a"}, ["protocols.a.base", "cycle (a -> a)"]),
])
def test_a_protocol_base_must_exist_and_not_loop(params, bases, words):
    p = copy.deepcopy(params)
    for name, base in bases.items():
        p["protocols"][name] = {"description": name, "base": base}
    p["protocols"].setdefault("b", {"description": "b"})
    with pytest.raises(ParamsError) as err:
        validate_params(p)
    assert all(w in str(err.value) for w in words), str(err.value)


@pytest.mark.parametrize("key, value, words", [
    ("distill.iterations", "many", ["distill.iterations", "not of type 'integer'"]),
    ("distill.iterations", 0, ["distill.iterations", "minimum"]),
    ("evaluate.seeds", [], ["evaluate.seeds"]),
    ("distill.loss.atom.p_c", 0.5, ["distill.loss.atom.p_c", "minimum"]),
    ("datasets.cifar10.distill.lr_img", -1.0, ["datasets.cifar10.distill.lr_img"]),
    ("runtime.device", "gpu", ["runtime.device"]),
    ("experiment.methods", ["atom", "dc"], ["experiment.methods.1"]),
    ("distill.unknown_knob", 1, ["distill", "unknown_knob"]),
    ("experiment.datasets", ["nope"], ["experiment.datasets.0", "nope"]),
    ("datasets.digits.options.tset_fraction", 0.3, ["datasets.digits.options", "tset_fraction"]),
    ("datasets.cifar10.options.sorce", "x.tar.gz", ["datasets.cifar10.options", "sorce"]),
    ("datasets.tinyimagenet.options.test_fraction", 0.2, ["datasets.tinyimagenet.options", "test_fraction"]),
    ("datasets.cifar10-jpeg.options.mode", "rbg", ["datasets.cifar10-jpeg.options.mode", "rbg"]),
])
def test_bad_values_name_their_key(params, key, value, words):
    bad = copy.deepcopy(params)
    *parents, last = key.split(".")
    node = bad
    for p in parents:
        node = node[p]
    node[last] = value
    with pytest.raises(ParamsError) as err:
        validate_params(bad)
    for w in words:
        assert w in str(err.value)


def test_a_stage_with_bad_params_stops_before_any_compute(tmp_path):
    root = make_project(tmp_path / "p", {"distill": {"batch_real": -3}})
    res = subprocess.run([sys.executable, "-m", "stages.distill", "--dataset", "digits", "--method", "atom",
                          "--ipc", "1"], cwd=root, env=project_env(root), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    assert "distill.batch_real" in res.stderr and "minimum" in res.stderr
    # nothing was read, computed or written (not even a log or an MLflow store)
    assert not any((root / d).exists() for d in ("data", "results", "logs", "mlflow.db"))


@pytest.mark.parametrize("bad, words", [
    ({"evaluate": {"epochs": 2.5}}, ["epochs", "2.5", "integer"]),
    ({"datasets": {"digits": {"options": {"test_fracton": 0.3}}}}, ["test_fracton", "options"]),
])
def test_snakemake_validates_params_before_scheduling(tmp_path, bad, words):
    root = make_project(tmp_path / "p", bad)
    res = subprocess.run([tool("snakemake"), "-n", "--cores", "1"], cwd=root, env=project_env(root),
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert all(w in out for w in words), out[-2000:]
    assert not (root / "results").exists()


def test_stage_params_cover_what_each_stage_reads(params):
    # a change in any of these reruns the stage in Snakemake (params:) and DVC (params:); both
    # render the refs each rule declares in stages/common/contract.py
    sp = stage_params(params, "distill", "digits")
    assert sp["distill"] == section(params, "distill", "digits") and sp["dsa"] == params["dsa"]
    assert sp["runtime.seed"] == 0
    assert "distill" not in stage_params(params, "evaluate", "digits")
    assert "runtime.seed" in stage_params(params, "evaluate_random", "digits")
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # distill validates with the evaluate settings; the protocol and validation split shape both
    assert set(dvc["distill"]["params"]) == {"distill", "dsa", "runtime.seed", "evaluate", "validation", "protocols",
                                             "pool", "datasets.${item.dataset}.distill",
                                             "datasets.${item.dataset}.evaluate", "datasets.${item.dataset}.pool",
                                             "datasets.${item.dataset}.validation", "datasets.${item.dataset}.protocol"}
    assert set(sp) == {"distill", "dsa", "runtime.seed", "evaluate", "validation", "protocol", "pool"}
    # the pool is cached by dataset and pool settings: the distillation network, never lr_img, the method or the IPC
    pp = stage_params(params, "pool", "digits")
    assert set(pp) == {"pool", "distill.net", "validation.per_class", "validation.seed", "dsa", "protocol"}
    assert "distill.net" in dvc["pool"]["do"]["params"] and "distill" not in dvc["pool"]["do"]["params"]
    changed = copy.deepcopy(params)
    changed["distill"]["lr_img"] = params["distill"]["lr_img"] * 2
    changed["distill"]["iterations"] = params["distill"]["iterations"] + 1
    changed["validation"]["epochs"] = params["validation"]["epochs"] + 1
    assert stage_params(changed, "pool", "digits") == pp
    changed["pool"]["epochs"] = params["pool"]["epochs"] + 1
    assert stage_params(changed, "pool", "digits") != pp
    assert set(dvc["evaluate"]["params"]) == {"evaluate", "dsa", "protocols", "datasets.${item.dataset}.evaluate",
                                              "datasets.${item.dataset}.protocol"}
    assert "distill" in stage_params(params, "evaluate_selected", "digits")
    assert Path(ROOT / "tests/params.tiny.yaml").is_file()


def test_every_params_ref_of_every_rule_renders_for_both_tools(params):
    # each ref a rule declares is a real key (a value for Snakemake) and is covered by a key of
    # dvc.yaml's list (DVC); a rule without a dataset wildcard resolves it per dataset
    from stages.common.contract import RULES
    from stages.common.params import dvc_params

    for name, rule in RULES.items():
        values = stage_params(params, name, "digits" if "dataset" in rule.over else None)
        assert list(values) == list(rule.params), name
        keys = dvc_params(name, "${item}")
        for ref in rule.params:
            head = ref.partition(".")[0]
            want = {"dataset": "datasets", "protocol": "datasets"}.get(head, ref)
            assert any(k == want or k.startswith(want + ".") or want.startswith(k + ".") for k in keys), (name, ref)
    # an edit to a protocol another dataset uses reruns nothing here; one to this dataset's does
    other = copy.deepcopy(params)
    other["protocols"]["elsewhere"] = {"description": "x", "distill": {"iterations": 7}}
    assert stage_params(other, "distill", "digits") == stage_params(params, "distill", "digits")
    report = stage_params(params, "report")
    assert set(report["validation"]) == set(params["experiment"]["datasets"])
