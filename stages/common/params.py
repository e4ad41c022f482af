"""params.yaml: loading, validation, the merged sections, and what each rule reads of it.

:func:`load_params` reads params.yaml and validates it against ``schemas/params.schema.yaml``
(plus the cross-key checks of :func:`check_params`) *before* torch is imported or any data is
touched, so a wrong type or an out-of-range value stops the run with an error naming the key.
The section helpers (:func:`section`, :func:`distill_kwargs`, :func:`evaluate_settings`)
merge a dataset group's and its protocol's overrides into the shared sections.
:func:`stage_params` and :func:`dvc_params` render a rule's ``params`` refs
(:class:`stages.common.contract.Rule`): the values the Snakefile passes as the rule's
``params:`` (a change in any reruns it) and the keys dvc.yaml lists.

Torch-free: the Snakefile imports it.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from atom.catalog import DIGITS_CLASS_COUNTS, FACTS
from .contract import MERGED_SECTIONS, PARAMS, ROOT, RULES, uses_pool

__all__ = ["ParamsError", "SCHEMA", "read_yaml", "validate_params", "check_params", "load_params", "merge",
           "section", "protocol", "protocol_overrides", "distill_kwargs", "evaluate_settings", "stage_params",
           "dvc_params", "train_counts", "class_size_problem", "uses_pool"]

SCHEMA = ROOT / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """A params.yaml value is missing, of the wrong type or out of range."""


def read_yaml(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc


def _key(parts) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def validate_params(params: Any, source: str = PARAMS, schema_path: str | os.PathLike = SCHEMA) -> dict:
    """Check ``params`` against the schema, then the cross-key rules; raise :class:`ParamsError`
    listing every problem as ``<source>: <key>: <message>``."""
    import jsonschema

    schema = read_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = []
        for e in errors[:20]:
            lines.append(f"{source}: {_key(e.absolute_path)}: {e.message}")
        raise ParamsError("invalid parameters\n  " + "\n  ".join(dict.fromkeys(lines)))
    check_params(params, source)
    return params


def check_params(params: dict, source: str = PARAMS) -> None:
    """Rules the schema cannot express: the matrix names existing datasets, something runs, and
    its IPCs and validation split fit the class sizes of the datasets whose sizes are fixed."""
    exp = params["experiment"]
    for name in params["protocols"]:  # before any section() below resolves a chain
        chain = [name]
        while (base := params["protocols"][chain[-1]].get("base")) is not None:
            if base not in params["protocols"]:
                raise ParamsError(f"{source}: protocols.{chain[-1]}.base: {base!r} is not a key of `protocols` "
                                  f"(available: {sorted(params['protocols'])})")
            if base in chain:
                raise ParamsError(f"{source}: protocols.{name}.base: a cycle ({' -> '.join(chain + [base])})")
            chain.append(base)
    for i, name in enumerate(exp["datasets"]):
        if name not in params["datasets"]:
            raise ParamsError(f"{source}: experiment.datasets.{i}: {name!r} is not a key of `datasets` "
                              f"(available: {sorted(params['datasets'])})")
    for name, ds in params["datasets"].items():
        if ds.get("protocol") is not None and ds["protocol"] not in params["protocols"]:
            raise ParamsError(f"{source}: datasets.{name}.protocol: {ds['protocol']!r} is not a key of "
                              f"`protocols` (available: {sorted(params['protocols'])})")
    if not exp["methods"] and not exp["baselines"]:
        raise ParamsError(f"{source}: experiment.methods: no method and no baseline to run")
    for sec in ("crossarch", "nas"):
        for i, ipc in enumerate(params[sec]["ipcs"]):
            if ipc not in exp["ipcs"]:
                raise ParamsError(f"{source}: {sec}.ipcs.{i}: {ipc} is not in experiment.ipcs {exp['ipcs']} "
                                  f"(its sets are made there)")
    shards = params["nas"]["shards"]
    if shards != list(range(len(shards))):
        raise ParamsError(f"{source}: nas.shards: must be the indices 0 .. S-1 in order, got {shards}")
    for name in exp["datasets"]:
        if section(params, "validation", name)["per_class"] < 1:
            raise ParamsError(f"{source}: validation.per_class: the nas stage ranks candidates on the validation "
                              f"split; dataset {name!r} has none (per_class 0)")
    for name in exp["datasets"]:
        d, pool = section(params, "distill", name), section(params, "pool", name)
        if uses_pool(d) and pool["models"] < 1:
            raise ParamsError(f"{source}: pool.models: dataset {name!r} distils with distill.encoder "
                              f"{d['encoder']!r} and distill.calibration {d['calibration']!r}, which need a trained "
                              f"pool; set pool.models >= 1 (or encoder: random, calibration: 0)")
        if d["encoder_lambda"][0] > d["encoder_lambda"][1]:
            raise ParamsError(f"{source}: distill.encoder_lambda: must be [lo, hi] with lo <= hi, "
                              f"got {d['encoder_lambda']} (dataset {name!r})")
    for name in exp["datasets"]:  # before download: sizes known without reading any file
        counts = train_counts(params, name)
        if counts is not None and (problem := class_size_problem(params, name, counts, source)):
            raise ParamsError(problem)
    for name in exp["datasets"]:
        ds = params["datasets"][name]
        for sec in ("distill", "evaluate"):
            merged = section(params, sec, name)
            if sec == "distill" and merged["lr_milestones"] != sorted(merged["lr_milestones"]):
                raise ParamsError(f"{source}: datasets.{name}.distill.lr_milestones: must be increasing")
        if ds["paper"] is not None:
            n = len(ds["paper"]["ipcs"])
            for m, vals in ds["paper"]["methods"].items():
                if len(vals) != n:
                    raise ParamsError(f"{source}: datasets.{name}.paper.methods.{m}: {len(vals)} values "
                                      f"for {n} ipcs")


def train_counts(params: dict, dataset: str) -> dict[str, int] | None:
    """{class: training images} of a dataset group whose loader has fixed sizes, else None.
    digits keeps ``n - round(n * test_fraction)`` images of a class, as its stratified split does."""
    ds = params["datasets"][dataset]
    if ds["loader"] == "digits":
        frac = float((ds.get("options") or {}).get("test_fraction", 0.2))
        return {str(c): n - int(round(n * frac)) for c, n in enumerate(DIGITS_CLASS_COUNTS)}
    facts = FACTS.get(ds["loader"])
    if facts is not None and facts.train_per_class is not None:
        return {"every class": facts.train_per_class}
    return None


def class_size_problem(params: dict, dataset: str, counts: dict[str, int], source: str = PARAMS,
                       ipcs: list[int] | None = None) -> str | None:
    """Why the matrix cannot run on a dataset whose classes hold ``counts`` training images
    (None: it can). The validation split takes ``validation.per_class`` images of every class
    first; distillation (and the selected baseline) then starts from ``ipc * distill.factor**2``
    of what is left, the random baseline from ``ipc``."""
    if not counts:
        return None
    cls, n = min(counts.items(), key=lambda kv: kv[1])
    smallest = f"dataset {dataset!r} has {n} training images in its smallest class ({cls!r})"
    per_class = section(params, "validation", dataset)["per_class"]
    if per_class >= n:
        return (f"{source}: validation.per_class: {per_class} validation images per class leave no training "
                f"image: {smallest}; set validation.per_class below {n} (for this dataset: "
                f"datasets.{dataset}.validation.per_class)")
    exp = params["experiment"]
    f2 = section(params, "distill", dataset)["factor"] ** 2 if exp["methods"] or "selected" in exp["baselines"] else 1
    left = n - per_class
    for ipc in sorted(ipcs if ipcs is not None else exp["ipcs"], reverse=True):
        if ipc * f2 > left:
            need = f"{ipc} x distill.factor**2 = {ipc * f2}" if f2 > 1 else str(ipc)
            return (f"{source}: experiment.ipcs: ipc {ipc} needs {need} training images per class, but {smallest}, "
                    f"{left} once the validation split (validation.per_class: {per_class}) is carved off; use "
                    f"ipcs of at most {left // f2}, or a smaller validation.per_class")
    return None


def load_params(path: str | os.PathLike = PARAMS) -> dict:
    """Read and validate params.yaml (no torch, no data touched)."""
    params = read_yaml(path)
    return validate_params(params, str(path))


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in, key by key into nested dicts (both left unchanged)."""
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def protocol(params: dict, dataset: str) -> str | None:
    """The name of the protocol the dataset group selects (None: none)."""
    return params["datasets"][dataset].get("protocol")


def section(params: dict, name: str, dataset: str | None = None) -> dict:
    """A top-level section with the dataset group's overrides merged in, then its protocol's
    (``distill``, ``evaluate``, ``validation``): a protocol is the deliberate last word."""
    base = params[name]
    if dataset is None or name not in MERGED_SECTIONS:
        return copy.deepcopy(base)
    out = merge(base, params["datasets"][dataset].get(name) or {})
    proto = protocol(params, dataset)
    return merge(out, protocol_overrides(params, proto, name)) if proto else out


def protocol_overrides(params: dict, proto: str, name: str) -> dict:
    """A protocol's overrides of section ``name``: its ``base`` protocol's (resolved the same
    way, so chains work), then its own on top. :func:`check_params` has ruled out unknown bases
    and cycles."""
    entry = params["protocols"][proto]
    own = entry.get(name) or {}
    return merge(protocol_overrides(params, entry["base"], name), own) if entry.get("base") else copy.deepcopy(own)


def distill_kwargs(params: dict, dataset: str, method: str) -> dict:
    """Keyword arguments of ``atom.distillation.distill`` for one experiment (besides data/ipc/method)."""
    cfg = section(params, "distill", dataset)
    losses = cfg.pop("loss")
    cfg["loss"] = dict(losses[method])
    cfg["seed"] = params["runtime"]["seed"]
    cfg["dsa_params"] = dict(params["dsa"])
    return cfg


def evaluate_settings(params: dict, dataset: str, kind: str) -> tuple[list[int], dict, bool]:
    """(seeds, EvalConfig keyword arguments, batched: true/false/"auto") for a method or baseline ``kind``."""
    cfg = section(params, "evaluate", dataset)
    full = cfg.pop("full")
    if kind == "full":
        cfg.update(full)
    seeds = list(cfg.pop("seeds"))
    batched = cfg.pop("batched")  # true | false | "auto" (atom.speed.resolve_batched, per device)
    cfg["dsa_params"] = dict(params["dsa"])
    return seeds, cfg, batched


def _ref_value(params: dict, ref: str, dataset: str):
    """The value of one params ref for a dataset (:class:`stages.common.contract.Rule`)."""
    head, _, rest = ref.partition(".")
    if head == "dataset":
        return params["datasets"][dataset][rest]
    if head == "protocol":
        return protocol(params, dataset)
    if head in MERGED_SECTIONS:
        value = section(params, head, dataset)
        return value[rest] if rest else value
    value = params
    for part in ref.split("."):
        value = value[part]
    return value


def _per_dataset(ref: str) -> bool:
    head = ref.partition(".")[0]
    return head in ("dataset", "protocol") or head in MERGED_SECTIONS


def stage_params(params: dict, rule: str, dataset: str | None = None) -> dict:
    """The values a rule's jobs depend on, ``{ref: value}``: a change in any reruns them (the
    Snakefile's ``params:``). Merged sections are resolved for the job's dataset (an edit to a
    protocol another dataset uses reruns nothing here); a rule without a dataset wildcard gets
    them per dataset of the matrix."""
    if rule not in RULES:
        raise ValueError(f"stage: unknown stage {rule!r}")
    datasets = [dataset] if "dataset" in RULES[rule].over else params["experiment"]["datasets"]
    out = {}
    for ref in RULES[rule].params:
        if _per_dataset(ref) and "dataset" not in RULES[rule].over:
            out[ref] = {d: _ref_value(params, ref, d) for d in datasets}
        else:
            out[ref] = _ref_value(params, ref, dataset)
    return out


def dvc_params(rule: str, dataset: str = "${item}") -> list[str]:
    """The params.yaml keys dvc.yaml lists for a rule (``dataset``: the template of its dataset):
    a merged section is the shared section, the dataset group's override and every protocol
    (DVC cannot resolve which one applies); without a dataset wildcard, ``datasets`` whole."""
    r = RULES[rule]
    group = f"datasets.{dataset}" if "dataset" in r.over else "datasets"
    out: list[str] = []

    def add(*keys: str) -> None:
        out.extend(k for k in keys if k not in out)

    for ref in r.params:
        head, _, rest = ref.partition(".")
        if head == "dataset":
            add(f"{group}.{rest}" if "dataset" in r.over else group)
        elif head == "protocol":
            add(f"{group}.protocol" if "dataset" in r.over else group)
        elif head in MERGED_SECTIONS:
            add(ref, f"{group}.{head}" if "dataset" in r.over else group, "protocols")
        else:
            add(ref)
    return out
