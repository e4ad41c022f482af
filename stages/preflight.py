"""Checks a stage makes before any compute: its inputs exist, and the folders it writes can
take what it will write.

:func:`check` runs when a stage starts (:class:`stages.runtime.Stage`), after params.yaml is
validated and before anything is written (not even the log):

- every input the stage reads exists, else one line naming the file and the stage (and its
  command) that makes it;
- every folder it writes (``paths.logs``, ``paths.results``, ``paths.state``, ...) is a folder,
  or can be created, and is writable (an access check, then a probe file that the kernel
  creates unnamed where it can and that is removed at once);
- each disk holding those folders has room for what the stage will write there:
  :func:`estimate`, from the data's shape (the prepared file's header, else the sizes of the
  datasets whose sizes are fixed, else the raw files), times :data:`MARGIN`, plus
  :data:`MIN_FREE` for logs and records. A disk below that is refused with its free space.

Each failure is a :class:`PreflightError`: one line naming the folder or file and the
params.yaml setting (``paths.results``), which :func:`stages.runtime.run` prints without a
traceback (exit code 4).

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

from .layout import METHODS, PATTERNS, path
from .params import section, train_counts, uses_pool

__all__ = ["PreflightError", "MIN_FREE", "MARGIN", "check", "check_folders", "estimate", "data_shape", "inputs",
           "outputs", "producer", "setting", "human", "refused_write"]

MiB = 1 << 20
MIN_FREE = 16 * MiB  # per disk, beyond the estimate: logs, JSON records, figures, MLflow's own files
MARGIN = 1.5         # on the estimate: files rewritten beside their old copy, formats' overheads

# what each stage writes (keys of stages.layout.PATTERNS); the evaluate and visualize stages
# write other files in their other modes (see outputs())
OUTPUTS = {
    "download": ["raw", "download_metrics", "download_info"],
    "zca": ["prepared", "state", "zca_metrics", "zca_info"],
    "pool": ["pool", "pool_metrics", "pool_info", "pool_state"],
    "distill": ["synthetic", "last", "loss_csv", "val_curve", "distill_metrics", "distill_info", "checkpoint",
                "checkpoint_meta"],
    "crossarch": ["crossarch"],
    "nas": ["nas_shard"],
    "nas_merge": ["nas_json", "nas_csv", "nas_png"],
    "report": ["summary_md", "summary_json", "summary_csv"],
}
# which stage writes an input, and the wildcards its command takes
PRODUCERS = {"raw": ("download", ()), "prepared": ("zca", ()), "state": ("zca", ()), "pool": ("pool", ()),
             "synthetic": ("distill", ("method", "ipc")), "loss_csv": ("distill", ("method", "ipc")),
             "val_curve": ("distill", ("method", "ipc")), "nas_shard": ("nas", ("shard",))}
# known download sizes in bytes (the official archive, what it extracts to)
DOWNLOADS = {"cifar10": (170_498_071, 190 * MiB), "cifar100": (169_001_437, 190 * MiB),
             "tinyimagenet": (248_100_043, 500 * MiB)}
# (training images, test images, classes, channels, height, width) of the fixed-size datasets
SHAPES = {"cifar10": (50000, 10000, 10, 3, 32, 32), "cifar100": (50000, 10000, 100, 3, 32, 32),
          "tinyimagenet": (100000, 10000, 200, 3, 64, 64)}


class PreflightError(RuntimeError):
    """A stage cannot run here: an input is missing, or a folder it writes is unusable or full."""


def human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def setting(key: str) -> str:
    """The params.yaml setting a pattern's files live under (``paths.results``)."""
    return "paths." + PATTERNS[key].split("}", 1)[0].lstrip("{")


def producer(params: dict, key: str, wildcards: dict) -> str | None:
    """'the zca stage (python -m stages.zca --dataset digits)' for a file of ``key``, else None."""
    if key not in PRODUCERS:
        return None
    stage, extra = PRODUCERS[key]
    args = f"--dataset {wildcards['dataset']}" + "".join(f" --{w} {wildcards[w]}" for w in extra)
    return f"the {stage} stage (python -m stages.{stage} {args})"


def _needs_pool(params: dict, dataset: str) -> bool:
    return uses_pool(section(params, "distill", dataset))


def inputs(params: dict, stage: str, dataset, method=None, ipc=None) -> list[tuple[str, dict]]:
    """(key, wildcards) of every file the stage reads that an earlier stage writes."""
    one = {"dataset": dataset, "method": method, "ipc": ipc}
    methods = params["experiment"]["methods"]
    if stage == "zca":
        return [("raw", one)]
    if stage == "pool":
        return [("prepared", one)]
    if stage == "distill":
        return [("prepared", one)] + ([("pool", one)] if _needs_pool(params, dataset) else [])
    if stage == "evaluate":
        return [("prepared", one)] + ([("synthetic", one)] if method in METHODS else [])
    if stage == "visualize" and method is not None:
        return [(k, one) for k in ("synthetic", "loss_csv", "val_curve", "prepared", "state")]
    if stage in ("crossarch", "nas"):
        ipcs = [ipc] if stage == "crossarch" else params["nas"]["ipcs"]
        return [("prepared", one)] + [("synthetic", dict(one, method=m, ipc=k)) for m in methods for k in ipcs]
    if stage == "nas_merge":
        return [("nas_shard", dict(one, shard=s)) for s in params["nas"]["shards"]]
    return []


def outputs(stage: str, method=None) -> list[str]:
    """Keys of the files (and folders) a stage writes."""
    if stage == "evaluate":
        return ["eval_full", "eval_full_info"] if method == "full" else ["eval_metrics", "eval_info"]
    if stage == "visualize":
        return ["grid", "loss_png", "images"] if method is not None else ["accuracy_png", "accuracy_csv"]
    return list(OUTPUTS.get(stage, []))


# ---------------------------------------------------------------------------------- sizes

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
        classes = json.loads(head["__metadata__"]["atom.io"])["classes"]
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
        return (n_train, 1797 - n_train, 10, 1, 8, 8)
    if loader in SHAPES:
        return SHAPES[loader]
    if loader == "imagefolder":
        return _imagefolder_shape(params, dataset)
    return None


def _convnet_params(net: dict, shape: tuple) -> int:
    """About the number of weights of a ConvNet of ``net`` on data of ``shape``."""
    _, _, k, c, h, w = shape
    width, depth = net["width"], net["depth"]
    side = (h * w) // (4 ** depth if net.get("pool", "avg") != "none" else 1)
    return 9 * width * (c + width * (depth - 1)) + 3 * width * depth + max(1, side) * width * k + k


def estimate(params: dict, stage: str, dataset, method=None, ipc=None) -> dict[str, int]:
    """Bytes the stage writes, per setting (``paths.results``: n), before :data:`MARGIN`; the
    small files (logs, JSON, figures) are left to :data:`MIN_FREE`."""
    if dataset is None:
        return {}
    shape = data_shape(params, dataset)
    loader = params["datasets"][dataset]["loader"]
    opts = params["datasets"][dataset].get("options") or {}
    if stage == "download":
        if loader in DOWNLOADS:
            archive, extracted = DOWNLOADS[loader]
            return {"paths.raw": extracted + (0 if opts.get("source") else archive)}
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
    if stage == "zca":
        d = c * h * w
        zca = 4 * 4 * d * d if params["datasets"][dataset]["preprocess"]["zca"] else 0  # matrix + inverse, twice
        return {"paths.prepared": image * (n_train + n_test) + zca}
    if stage == "pool":
        cfg = section(params, "pool", dataset)
        weights = 4 * _convnet_params(section(params, "distill", dataset)["net"], shape)
        return {"paths.results": cfg["models"] * 2 * weights, "paths.state": cfg["models"] * 4 * weights}
    if stage == "distill" and ipc is not None:
        its = section(params, "distill", dataset)["iterations"]
        syn = image * ipc * k
        # synthetic.pt and last.pt; the checkpoint (set, momentum, best set, losses) and its
        # replacement while it is rewritten
        return {"paths.results": 2 * syn + 32 * its, "paths.state": 2 * (3 * syn + 8 * its)}
    if stage == "visualize" and method is not None and ipc is not None:
        return {"paths.results": 2 * ipc * k * (c * h * w + 1024)}  # PNGs, at most about 2 bytes a pixel
    return {}


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


def check(params: dict, stage: str, dataset=None, method=None, ipc=None, shard=None, log_file=None) -> None:
    """Everything a stage needs before it computes: inputs, writable folders, free space."""
    # a job outside the stage's own range first: its missing inputs would send the user to a
    # distill run that the range refuses as well
    if stage == "crossarch" and ipc is not None and ipc not in params["crossarch"]["ipcs"]:
        raise ValueError(f"--ipc: {ipc} is not in crossarch.ipcs {params['crossarch']['ipcs']}")
    for key, wc in inputs(params, stage, dataset, method, ipc):
        f = path(params, key, **wc)
        if not f.exists():
            made = producer(params, key, wc)
            raise PreflightError(f"{f}: not found; run {made} first" if made else f"{f}: not found")
    folders: dict[str, list[Path]] = {}
    if log_file is not None:
        folders["paths.logs"] = [Path(log_file).parent]
    wc = {"dataset": dataset, "method": method, "ipc": ipc, "shard": shard}
    for key in outputs(stage, method):
        try:
            f = path(params, key, **wc)
        except (KeyError, IndexError):
            continue
        # a folder output is made inside its parent (atomically, by a rename)
        folders.setdefault(setting(key), []).append(f.parent)
    need = estimate(params, stage, dataset, method, ipc)
    check_folders(folders, need)


def refused_write(exc: BaseException) -> bool:
    """Whether an error is the file system refusing a write: disk full, read-only, over quota."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
