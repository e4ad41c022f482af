"""One source per fact: where a fact must have two copies (a torch-free one for the workflow
files, a schema for params.yaml), every copy agrees with its source; and the import graph
stays what the layout promises (no circles, the package roots import nothing)."""
from __future__ import annotations

import dataclasses
import inspect

import pytest
import yaml

from pipeline_support import ROOT
from stages import report
from stages.common import codedeps, contract as layout


@pytest.fixture(scope="module")
def schema():
    return yaml.safe_load((ROOT / "schemas/params.schema.yaml").read_text())


@pytest.fixture(scope="module")
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_every_copy_of_the_method_list_equals_atom_losses_methods(schema):
    from atom.losses import METHOD_DEFAULTS, METHODS

    assert layout.METHODS == METHODS and tuple(METHOD_DEFAULTS) == METHODS
    d = schema["$defs"]
    top = schema["properties"]["distill"]["allOf"][1]["properties"]["loss"]
    copies = {
        "schema experiment.methods": schema["properties"]["experiment"]["properties"]["methods"]["items"]["enum"],
        "schema distill.loss keys": list(d["distill"]["properties"]["loss"]["properties"]),
        "schema distill.loss required": top["required"],
        "schema distill.loss required keys": list(top["properties"]),
        "schema paper.methods keys": list(d["paper"]["properties"]["methods"]["properties"]),
        "stages.report labels": [k for k in report.LABELS if k not in layout.BASELINES],
    }
    for where, copy in copies.items():
        assert tuple(copy) == METHODS, where
    assert tuple(schema["properties"]["experiment"]["properties"]["baselines"]["items"]["enum"]) == layout.BASELINES
    assert tuple(report.LABELS) == METHODS + layout.BASELINES
    # the Snakefile takes its wildcard constraints from the contract instead of spelling them out
    assert "**C.WILDCARD_PATTERNS" in (ROOT / "Snakefile").read_text()
    assert layout.WILDCARD_PATTERNS["method"] == "|".join(METHODS)


def _resolve(schema: dict, node: dict) -> dict:
    if "$ref" in node:
        return _resolve(schema, schema["$defs"][node["$ref"].split("/")[-1]])
    if "allOf" in node:
        return _resolve(schema, node["allOf"][0])
    return node


def _defaults(schema: dict, node: dict, where: tuple = ()):
    """(params.yaml key path, default) of every `default:` reachable from params.yaml's top-level
    sections (dataset groups only hold overrides of these)."""
    node = _resolve(schema, node)
    if "default" in node:
        yield where, node
    for name, sub in (node.get("properties") or {}).items():
        if where == () and name == "datasets":
            continue
        yield from _defaults(schema, sub, where + (name,))


def _library_default(where: tuple):
    """The library's default for a params.yaml key, or ``...`` where the library has none."""
    from atom.augment import DSAParams
    from atom.distillation import DistillConfig
    from atom.evaluation import evaluate
    from atom.eval_protocol import EvalConfig

    classes = {"distill": DistillConfig, "evaluate": EvalConfig, "dsa": DSAParams}
    if where == ("evaluate", "batched"):
        return inspect.signature(evaluate).parameters["batched"].default
    if where[0] not in classes or len(where) < 2:
        return ...
    field = {f.name: f for f in dataclasses.fields(classes[where[0]])}.get(where[1])
    if field is None:
        return ...
    value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    for key in where[2:]:
        value = value[key]
    return value


def _all_with_default(node):
    if isinstance(node, dict):
        if "default" in node:
            yield node
        for key, sub in node.items():
            if key not in ("default", "enum"):
                yield from _all_with_default(sub)
    elif isinstance(node, list):
        for sub in node:
            yield from _all_with_default(sub)


def test_every_schema_default_equals_params_yaml_and_the_library_default(schema, params):
    found = list(_defaults(schema, schema))
    # every `default:` in the schema is reached (none hides where this walk does not look)
    assert {id(n) for n in _all_with_default(schema)} == {id(n) for _, n in found}
    checked = 0
    for where, node in found:
        default = node["default"]
        value = params
        for key in where:
            value = value[key]
        assert value == default, f"{'.'.join(where)}: schema default {default!r}, params.yaml {value!r}"
        lib = _library_default(where)
        if lib is not ...:
            checked += 1
            assert lib == default, f"{'.'.join(where)}: schema default {default!r}, library default {lib!r}"
    assert len(found) > 40 and checked > 25


def test_loss_constants_in_params_yaml_equal_the_library_defaults(params):
    from atom.losses import METHOD_DEFAULTS

    for method, terms in params["distill"]["loss"].items():
        assert terms == {k: METHOD_DEFAULTS[method][k] for k in terms}, method
    # datadam and dm have no channel term: their p_c and w_c are not spelled out
    assert {"p_c", "w_c"} <= set(params["distill"]["loss"]["atom"])
    assert not {"p_c", "w_c"} & (set(params["distill"]["loss"]["datadam"]) | set(params["distill"]["loss"]["dm"]))


def test_no_module_of_the_project_imports_itself_back():
    modules = [f"{pkg}.{p.stem}" for pkg in ("atom", "stages", "stages.common")
               for p in ROOT.joinpath(*pkg.split(".")).glob("*.py") if p.stem != "__init__"]
    graph = {m: codedeps.imports(m) - {"atom", "stages", "stages.common"} for m in modules}

    def reaches(start: str, target: str, seen: set) -> bool:
        for n in graph[start]:
            if n == target or (n not in seen and (seen.add(n) or reaches(n, target, seen))):
                return True
        return False

    circles = [m for m in modules if reaches(m, m, set())]
    assert not circles, f"import circle through {circles}"
    assert "atom.evaluation" not in graph["atom.batched"] and "atom.eval_protocol" in graph["atom.batched"]


def test_the_modules_the_snakefile_imports_load_without_torch():
    # the lazy package root lets the machinery read atom.catalog's facts without loading torch
    import subprocess
    import sys

    code = ("import sys, stages.common.contract, stages.common.codedeps, stages.common.params, "
            "stages.common.dvc_yaml, stages.common.preflight, stages.common.cluster, stages.common.locks, "
            "stages.common.runner, stages.common.tracking; "
            "bad = ({'torch', 'mlflow'} & {m.split('.')[0] for m in sys.modules}) | "
            "{m for m in sys.modules if m.startswith('atom.') and m != 'atom.catalog'}; "
            "sys.exit(' '.join(sorted(bad)) or None)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_schema_options_per_loader_equal_atom_data_options(schema):
    # every loader of atom.data has a closed list of options in the schema, the same keys
    from atom.data import OPTIONS

    seen = {}
    for rule in schema["$defs"]["dataset"]["allOf"]:
        loader = rule["if"]["properties"]["loader"]
        names = [loader["const"]] if "const" in loader else loader["enum"]
        ref = rule["then"]["properties"]["options"]["$ref"].split("/")[-1]
        options = schema["$defs"][ref]
        assert options["additionalProperties"] is False, ref
        for name in names:
            seen[name] = set(options["properties"])
    assert seen == {name: set(opts) for name, opts in OPTIONS.items()}


@pytest.mark.parametrize("init,factor,start", [("real", 1, "random"), ("herding", 2, "selected"),
                                               ("kcenter", 1, "selected"), ("real", 2, None), ("noise", 1, None)])
def test_the_report_names_the_baseline_distillation_starts_from(init, factor, start):
    # init real draws the random baseline's own subset (atom.sets.random_subset, same seed) only
    # at factor 1; at factor 2 it starts from mosaics of twice as many images, neither baseline
    labels = report.start_labels(init, factor)
    marked = [b for b in ("random", "selected") if "distillation's start" in labels[b]]
    assert marked == ([start] if start else [])


def test_the_lazy_package_root_names_every_module_and_loads_none_up_front():
    import subprocess
    import sys

    import atom

    assert set(atom._SUBMODULES) == {p.stem for p in (ROOT / "atom").glob("*.py") if p.stem != "__init__"}
    for name, module in atom._EXPORTS.items():
        assert name in vars(__import__(f"atom.{module}", fromlist=[name])), (name, module)
    # `import atom` alone loads no submodule; a name loads its own module and what that imports
    code = ("import sys, atom; assert [m for m in sys.modules if m.startswith('atom.')] == []; "
            "atom.load_digits; assert 'atom.losses' not in sys.modules and 'atom.data' in sys.modules; "
            "assert callable(atom.distill) and callable(atom.evaluate)")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
