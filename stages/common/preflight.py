"""Checks a stage makes before any compute: its inputs exist, and the folders it writes can
take what it will write.

:func:`check` runs when a stage starts (:class:`stages.common.runner.Stage`), after
params.yaml is validated and before anything is written (not even the log):

- every input the job reads (:func:`stages.common.contract.inputs`) exists, else one line
  naming the file and the stage (and its command) that makes it;
- every folder it writes (``paths.logs``, ``paths.results``, ``paths.state``, ...) is a folder,
  or can be created, and is writable (an access check, then a probe file that the kernel
  creates unnamed where it can and that is removed at once);
- each disk holding those folders has room for what the stage will write there:
  :func:`estimate`, from the data's shape (the prepared file's header, else the sizes of the
  datasets whose sizes are fixed, :mod:`atom.catalog`, else the raw files), times
  :data:`MARGIN`, plus :data:`MIN_FREE` for logs and records. A disk below that is refused with
  its free space.

Each failure is a :class:`PreflightError`: one line naming the folder or file and the
params.yaml setting (``paths.results``), which :func:`stages.common.runner.run` prints without
a traceback (exit code 4).

Torch-free (the data's shape is read from the safetensors header, not loaded).
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
from pathlib import Path

from atom.catalog import DIGITS_CLASS_COUNTS, FACTS, MiB
from .contract import RULES, inputs, outputs, path, producer, setting
from .params import section, train_counts

__all__ = ["PreflightError", "MIN_FREE", "MARGIN", "check", "check_folders", "estimate", "data_shape", "human",
           "refused_write", "memory_mb"]

MIN_FREE = 16 * MiB  # per disk, beyond the estimate: logs, JSON records, figures, MLflow's own files
MARGIN = 1.5         # on the estimate: files rewritten beside their old copy, formats' overheads


class PreflightError(RuntimeError):
    """A stage cannot run here: an input is missing, or a folder it writes is unusable or full."""


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _header(file: Path) -> dict | None:
    """The JSON header of a safetensors file (tensor shapes, metadata), without its data."""
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 * MiB:
                return None
            return json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return None


def _prepared_shape(file: Path) -> tuple | None:
    head = _header(file)
    try:
        tr, te = head["train_images"]["shape"], head["test_images"]["shape"]
        doc = json.loads(head["__metadata__"]["atom.io"])
        # atom.io's metadata: {"__value__": the skeleton, "__sha256__": ...}; older files, the skeleton
        classes = (doc["__value__"] if "__sha256__" in doc else doc)["classes"]
        return (tr[0], te[0], len(classes), *(list(tr[1:]) + [1, 1])[:3])
    except (TypeError, KeyError, ValueError, IndexError):
        return None


def _imagefolder_shape(params: dict, dataset: str) -> tuple | None:
    """(images, 0, 0, channels, height, width) of a downloaded ImageFolder: the files counted,
    one image's size read from its header (or options.resize)."""
    opts = params["datasets"][dataset].get("options") or {}
    folder = path(params, "raw", dataset=dataset) / "images"
    files = [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if not f.startswith(".")]
    if not files:
        return None
    c = 1 if opts.get("mode") == "grayscale" else 3
    resize = opts.get("resize")
    if resize is not None:
        h, w = (resize, resize) if isinstance(resize, int) else resize
    else:
        try:
            from PIL import Image

            with Image.open(sorted(files)[0]) as im:
                w, h = im.size
        except Exception:  # noqa: BLE001 - an estimate only: the zca stage reports bad images
            return None
    return (len(files), 0, 0, c, h, w)


def data_shape(params: dict, dataset: str) -> tuple | None:
    """(n_train, n_test, classes, channels, height, width), or None where nothing tells yet."""
    shape = _prepared_shape(path(params, "prepared", dataset=dataset))
    if shape is not None:
        return shape
    loader = params["datasets"][dataset]["loader"]
    if loader == "digits":
        n_train = sum(train_counts(params, dataset).values())
        return (n_train, sum(DIGITS_CLASS_COUNTS) - n_train, *FACTS["digits"].shape[2:])
    if loader in FACTS:
        return FACTS[loader].shape
    if loader == "imagefolder":
        return _imagefolder_shape(params, dataset)
    return None


def _convnet_params(net: dict, shape: tuple) -> int:
    """About the number of weights of a ConvNet of ``net`` on data of ``shape``."""
    _, _, k, c, h, w = shape
    width, depth = net["width"], net["depth"]
    side = (h * w) // (4 ** depth if net.get("pool", "avg") != "none" else 1)
    return 9 * width * (c + width * (depth - 1)) + 3 * width * depth + max(1, side) * width * k + k


def estimate(params: dict, rule: str, wildcards: dict) -> dict[str, int]:
    """Bytes a job of ``rule`` writes, per setting (``paths.results``: n), before :data:`MARGIN`;
    the small files (logs, JSON, figures) are left to :data:`MIN_FREE`."""
    dataset, ipc = wildcards.get("dataset"), wildcards.get("ipc")
    if dataset is None:
        return {}
    shape = data_shape(params, dataset)
    loader = params["datasets"][dataset]["loader"]
    opts = params["datasets"][dataset].get("options") or {}
    if rule == "download":
        facts = FACTS.get(loader)
        if facts is not None and facts.archive_bytes:
            return {"paths.raw": facts.extracted_bytes + (0 if opts.get("source") else facts.archive_bytes)}
        if loader == "imagefolder" and opts.get("source"):
            src = Path(opts["source"])
            if src.is_file():
                return {"paths.raw": 2 * src.stat().st_size}  # extracted (about the archive's size) + temp
            if src.is_dir():
                return {"paths.raw": sum(p.stat().st_size for p in src.rglob("*") if p.is_file())}
        return {"paths.raw": MiB}
    if shape is None:
        return {}
    n_train, n_test, k, c, h, w = shape
    image = 4 * c * h * w  # float32
    if rule == "zca":
        d = c * h * w
        zca = 4 * 4 * d * d if params["datasets"][dataset]["preprocess"]["zca"] else 0  # matrix + inverse, twice
        return {"paths.prepared": image * (n_train + n_test) + zca}
    if rule == "pool":
        cfg = section(params, "pool", dataset)
        weights = 4 * _convnet_params(section(params, "distill", dataset)["net"], shape)
        return {"paths.results": cfg["models"] * 2 * weights, "paths.state": cfg["models"] * 4 * weights}
    if rule == "distill" and ipc is not None:
        its = section(params, "distill", dataset)["iterations"]
        syn = image * ipc * k
        # synthetic.pt and last.pt; the checkpoint (set, momentum, best set, losses) and its
        # replacement while it is rewritten
        return {"paths.results": 2 * syn + 32 * its, "paths.state": 2 * (3 * syn + 8 * its)}
    if rule == "visualize" and ipc is not None:
        return {"paths.results": 2 * ipc * k * (c * h * w + 1024)}  # PNGs, at most about 2 bytes a pixel
    return {}


# Memory a job asks a scheduler for: the interpreter with torch and MLflow (about 1 GiB resident,
# measured on digits), plus the data it holds as float32 at its peak: zca decodes, converts and
# whitens the whole set (about four copies); the stages that load the prepared file hold it and
# the training part carved from it (two and a half).
BASE_MB = 1536
DATA_COPIES = {"download": 1.0, "zca": 4.0, "report": 0.0, "accuracy": 0.0, "nas_merge": 0.0}
_SHAPES: dict[tuple, tuple | None] = {}


def memory_mb(params: dict, rule: str, wildcards: dict) -> int:
    """The memory (MiB) to request for a job of ``rule``: :data:`BASE_MB` plus the dataset's
    float32 size times how many copies the rule holds (the Snakefile's ``mem_mb``, which a
    profile's ``set-resources`` may override)."""
    dataset = wildcards.get("dataset")
    copies = DATA_COPIES.get(rule, 2.5)
    shape = None
    if dataset is not None and copies:
        key = (dataset, str(path(params, "prepared", dataset=dataset)), str(path(params, "raw", dataset=dataset)))
        if key not in _SHAPES:  # once per dataset: the Snakefile asks for every job
            _SHAPES[key] = data_shape(params, dataset)
        shape = _SHAPES[key]
    if shape is None:
        return BASE_MB
    n_train, n_test, _, c, h, w = shape
    return BASE_MB + int(copies * 4 * (n_train + n_test) * c * h * w / MiB) + 1


# -------------------------------------------------------------------------------- folders

def _existing(p: Path) -> Path:
    p = Path(os.path.abspath(p))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _writable(folder: Path) -> str | None:
    """Why a folder cannot be written (None: it can)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return "is not writable" + (" (a read-only file system)" if _read_only(folder) else "")
    try:  # the kernel's own answer (ACLs, root squash, ...); O_TMPFILE where it can: no name
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"is not writable ({exc.strerror or exc})"
    return None


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def check_folders(folders: dict[str, list[Path]], need: dict[str, int]) -> None:
    """Raise :class:`PreflightError` if a folder (by setting) cannot be made or written, or if
    a disk has less free space than the settings on it need (``need``, before the margin)."""
    disks: dict[int, tuple[Path, list[str]]] = {}
    for name, paths in folders.items():
        for p in dict.fromkeys(paths):
            base = _existing(p)
            if not base.is_dir():
                what = "is not a folder" if base == Path(os.path.abspath(p)) else f"cannot be created: {base} is a file"
                raise PreflightError(f"{name}: {p} {what}; fix {name} in params.yaml or move it away")
            why = _writable(base)
            if why is not None:
                where = f"{p} {why}" if base == Path(os.path.abspath(p)) else f"{p} cannot be created: {base} {why}"
                raise PreflightError(f"{name}: {where}; point {name} in params.yaml at a writable folder, or "
                                     f"make this one writable")
            dev = base.stat().st_dev
            if dev not in disks:
                disks[dev] = (base, [])
            if name not in disks[dev][1]:
                disks[dev][1].append(name)
    for base, names in disks.values():
        want = int(MARGIN * sum(need.get(n, 0) for n in names)) + MIN_FREE
        try:
            free = shutil.disk_usage(base).free
        except OSError as exc:
            raise PreflightError(f"{', '.join(names)}: {base}: cannot read its free space ({exc.strerror})") from None
        if free < want:
            raise PreflightError(
                f"{', '.join(names)}: {base} has {human(free)} free; this stage needs about {human(want)} there "
                f"({human(MIN_FREE)} for logs and records"
                + (f" + {human(want - MIN_FREE)} for its files" if want > MIN_FREE else "")
                + f"); free some space or point {' / '.join(names)} in params.yaml at another disk")


def check(params: dict, rule: str, wildcards: dict, log_file=None) -> None:
    """Everything a job of ``rule`` needs before it computes: inputs, writable folders, free
    space. ``wildcards``: the job's (dataset, method, ipc, shard: those the rule has)."""
    # a job outside the stage's own range first: its missing inputs would send the user to a
    # distill run that the range refuses as well
    ipc = wildcards.get("ipc")
    if rule == "crossarch" and ipc is not None and ipc not in params["crossarch"]["ipcs"]:
        raise ValueError(f"--ipc: {ipc} is not in crossarch.ipcs {params['crossarch']['ipcs']}")
    for key, wc in inputs(params, rule, wildcards, section=section):
        f = path(params, key, **wc)
        if not f.exists():
            made = producer(params, key, wc)
            raise PreflightError(f"{f}: not found; run {made} first" if made else f"{f}: not found")
    folders: dict[str, list[Path]] = {}
    if log_file is not None:
        folders["paths.logs"] = [Path(log_file).parent]
    wc = {**RULES[rule].fixed, **wildcards}
    for key in outputs(rule, state=True):
        # a folder output is made inside its parent (atomically, by a rename)
        folders.setdefault(setting(key), []).append(path(params, key, **wc).parent)
    check_folders(folders, estimate(params, rule, wildcards))


def refused_write(exc: BaseException) -> bool:
    """Whether an error is the file system refusing a write: disk full, read-only, over quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
