"""params.yaml: loading, validation, and the settings each stage reads from it.

:func:`load_params` reads params.yaml and validates it against ``schemas/params.schema.yaml``
(plus the cross-key checks of :func:`check_params`) *before* torch is imported or any data is
touched, so a wrong type or an out-of-range value stops the run with an error naming the key.
The section helpers (:func:`section`, :func:`distill_kwargs`, :func:`evaluate_settings`)
merge a dataset group's overrides into the shared sections; :func:`stage_params` says which
values each stage depends on (the Snakefile's ``params:``, mirrored by dvc.yaml's).

Torch-free: the Snakefile imports it.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

from .layout import PARAMS, ROOT

__all__ = ["ParamsError", "SCHEMA", "read_yaml", "validate_params", "check_params", "load_params", "merge",
           "section", "protocol_overrides", "distill_kwargs", "evaluate_settings", "stage_params",
           "DIGITS_CLASS_COUNTS", "TRAIN_PER_CLASS", "train_counts", "class_size_problem"]

SCHEMA = ROOT / "schemas" / "params.schema.yaml"

# Training images per class of the loaders whose sizes are fixed, so that an IPC or a
# validation split too large for them is refused before anything is downloaded (an
# ImageFolder's sizes are known only once its files are read: the download stage checks them).
# CIFAR-10/100: 50,000 training images in 10/100 classes; TinyImageNet: 500 per class in 200
# classes. digits: scikit-learn's per-class counts (a test checks them), less the test split.
DIGITS_CLASS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)
TRAIN_PER_CLASS = {"cifar10": 5000, "cifar100": 500, "tinyimagenet": 500}


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
    if ds["loader"] in TRAIN_PER_CLASS:
        return {"every class": TRAIN_PER_CLASS[ds["loader"]]}
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


MERGED = ("distill", "evaluate", "validation", "pool")  # sections a dataset group and a protocol override


def protocol(params: dict, dataset: str) -> str | None:
    """The name of the protocol the dataset group selects (None: none)."""
    return params["datasets"][dataset].get("protocol")


def uses_pool(distill: dict) -> bool:
    """Whether a (merged) distill section draws on the pool stage's trained encoders: an
    encoder other than ``random``, or the calibration term."""
    return distill.get("encoder", "random") != "random" or distill.get("calibration", 0.0) > 0


def section(params: dict, name: str, dataset: str | None = None) -> dict:
    """A top-level section with the dataset group's overrides merged in, then its protocol's
    (``distill``, ``evaluate``, ``validation``): a protocol is the deliberate last word."""
    base = params[name]
    if dataset is None or name not in MERGED:
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
    """Keyword arguments of ``atom.distill.distill`` for one experiment (besides data/ipc/method)."""
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


def stage_params(params: dict, stage: str, dataset: str | None = None) -> dict:
    """The values a stage depends on: a change in any reruns it. Mirrors ``params:`` in dvc.yaml
    (the Snakefile passes this as the rule's ``params:``)."""
    ds = params["datasets"].get(dataset, {}) if dataset else {}
    if stage == "download":
        return {"loader": ds["loader"], "options": ds["options"]}
    if stage == "zca":
        return {"loader": ds["loader"], "options": ds["options"], "preprocess": ds["preprocess"]}
    if stage == "pool":  # the distillation network, the training split and the augmentation; not lr_img etc.
        return {"pool": section(params, "pool", dataset), "net": section(params, "distill", dataset)["net"],
                "validation": {k: section(params, "validation", dataset)[k] for k in ("per_class", "seed")},
                "dsa": params["dsa"], "protocol": protocol(params, dataset)}
    if stage == "distill":  # the validation evaluator is the evaluate section with validation's epochs
        return {"distill": section(params, "distill", dataset), "dsa": params["dsa"],
                "seed": params["runtime"]["seed"], "evaluate": section(params, "evaluate", dataset),
                "validation": section(params, "validation", dataset), "protocol": protocol(params, dataset),
                "pool": section(params, "pool", dataset)}
    if stage in ("evaluate", "evaluate_full"):
        return {"evaluate": section(params, "evaluate", dataset), "dsa": params["dsa"],
                "protocol": protocol(params, dataset)}
    if stage in ("evaluate_random", "evaluate_selected"):  # drawn from the training part of the split
        return {"evaluate": section(params, "evaluate", dataset), "dsa": params["dsa"],
                "seed": params["runtime"]["seed"], "validation": section(params, "validation", dataset),
                "protocol": protocol(params, dataset),
                **({"distill": section(params, "distill", dataset)} if stage == "evaluate_selected" else {})}
    if stage in ("crossarch", "nas"):  # sets from distill and the random draw; the evaluate protocol
        return {sec: section(params, sec, dataset) for sec in (stage, "evaluate", "validation")} | {
            "dsa": params["dsa"], "seed": params["runtime"]["seed"], "methods": params["experiment"]["methods"],
            "protocol": protocol(params, dataset)}
    if stage == "nas_merge":
        return {"nas": params["nas"], "methods": params["experiment"]["methods"], "visualize": params["visualize"]}
    if stage == "visualize":
        return {"visualize": params["visualize"]}
    if stage == "accuracy":
        return {"visualize": params["visualize"], "experiment": params["experiment"]}
    if stage == "report":
        return {"experiment": params["experiment"], "report": params["report"], "protocols": params["protocols"],
                "validation": {d: section(params, "validation", d) for d in params["experiment"]["datasets"]}, "crossarch": params["crossarch"],
                "nas": params["nas"],
                "paper": {d: params["datasets"][d]["paper"] for d in params["experiment"]["datasets"]}}
    raise ValueError(f"stage: unknown stage {stage!r}")
