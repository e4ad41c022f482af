"""Atomic file writes, safe tensor loading and checksums.

Everything the project writes goes through these helpers so that an interrupted run never
leaves a half-written artifact: data is written to a temporary file ``.<name>.<random>.tmp``
in the target folder, fsynced, then renamed over the target (``os.replace`` is atomic on
POSIX) and the folder fsynced, so a crash or power loss leaves the old file or the new one.
Files get the mode a plain ``open`` would give (``0o666`` minus the process umask), not
``mkstemp``'s private ``0o600``, so teammates sharing a machine can read the results.

:func:`save_tensors` stores, beside the tensors, a sha256 of everything the file holds (the
tensors' names, dtypes, shapes and bytes, and the other values) and, when asked, the file's
``kind`` (``"checkpoint"``, ``"pool"``, ...). :func:`load_tensors` recomputes the checksum and
refuses a file whose data no longer matches it (a flipped or lost byte: a
:class:`CorruptFileError`), a file of another kind than the caller expects, and one that lacks
a field the caller needs or holds it with the wrong type or shape (``fields``): one
:class:`UnreadableFileError` naming the file, never a ``KeyError`` later. It never runs pickled
code: a file that holds more than plain tensors is an :class:`UntrustedFileError`. A write the
file system refuses (disk full, read-only) is an ``OSError`` naming the file, whatever library
wrote it.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["atomic_path", "atomic_dir", "replace_dir", "save_tensors", "load_tensors", "check_fields", "UnreadableFileError", "UntrustedFileError",
           "CorruptFileError", "write_json", "write_text", "sha256", "digest", "umask", "fsync_path", "temp_dir"]


class UnreadableFileError(ValueError):
    """A file cannot be loaded as a tensor file (corrupt, truncated, another format); ``path``
    names it."""

    def __init__(self, path: str | os.PathLike, message: str):
        super().__init__(f"{path}: {message}")
        self.path = Path(path)


class UntrustedFileError(UnreadableFileError):
    """A file was refused for safety: it holds pickled objects other than plain tensors, which
    could run code when loaded."""


class CorruptFileError(UnreadableFileError):
    """A file's data no longer matches the checksum written with it (a flipped or lost byte)."""


def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's) data to disk; folders that cannot be opened are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def temp_dir(parent: str | os.PathLike, prefix: str, suffix: str = ".tmp") -> Path:
    """A fresh folder in ``parent`` (``mkdtemp``) with the umask's mode instead of ``0o700``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~umask())
    return tmp


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0o600 (and some writers recreate the file): follow the umask like open()
        os.chmod(tmp_path, 0o666 & ~umask())
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(path.parent)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def replace_dir(src: Path, dest: Path) -> None:
    """Move the finished folder ``src`` onto ``dest``; an old ``dest`` is swapped out first and
    deleted only after the new one is in place."""
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh folder beside ``path``; on success it replaces ``path``
    (:func:`replace_dir`), so a reader never sees half a folder; on failure it is removed and
    ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(path.parent, f".{path.name}.")
    try:
        yield tmp
        replace_dir(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# The one metadata key (safetensors keeps its metadata in a hash map: several keys would come out
# in another order in every process, and the same content would not give the same bytes). Its
# value: {"__value__": the JSON skeleton of everything that is not a tensor, "__sha256__": the
# checksum of the skeleton and every tensor (_digest), "__kind__": what the file is, or null};
# files written before checksums hold the skeleton alone.
_META = "atom.io"


def _pack(obj: Any, where: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``obj`` as JSON, each tensor replaced by ``{"__tensor__": name}`` (stored in ``tensors``)."""
    if isinstance(obj, torch.Tensor):
        name = where or "_"
        while name in tensors:
            name += "'"
        t = obj.detach().cpu()
        if not t.is_contiguous() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.contiguous().clone()  # a view: safetensors stores whole, unshared storages
        tensors[name] = t
        return {"__tensor__": name}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, f"{where}/{k}" if where else k, tensors) for k, v in obj.items()}
        return {"__dict__": [[_pack(k, f"{where}/key", tensors), _pack(v, f"{where}/{k}", tensors)]
                             for k, v in obj.items()]}  # non-string keys (optimizer state: ints)
    if isinstance(obj, (list, tuple)):
        items = [_pack(v, f"{where}/{i}", tensors) for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _pack(obj.item(), where, tensors)
    raise TypeError(f"save_tensors: cannot store {type(obj).__name__} at {where or 'the top level'!r}; "
                    "keep to tensors, numbers, strings, None, lists, tuples and dicts")


def _unpack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_unpack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if set(obj) == {"__tensor__"}:
            return tensors[obj["__tensor__"]]
        if set(obj) == {"__tuple__"}:
            return tuple(_unpack(v, tensors) for v in obj["__tuple__"])
        if set(obj) == {"__dict__"}:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in obj["__dict__"]}
        return {k: _unpack(v, tensors) for k, v in obj.items()}
    return obj


def _digest(skeleton: str, tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the skeleton and of every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256(skeleton.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"\0{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def save_tensors(obj: Any, path: str | os.PathLike, kind: str | None = None) -> Path:
    """Save ``obj`` (tensors, numbers, strings, None, lists, tuples, dicts) atomically as a
    `safetensors <https://huggingface.co/docs/safetensors>`_ file: the tensors by their key path
    (``state/mean``), everything else as one JSON document in the header's metadata.

    The bytes depend only on ``obj``: the same tensors and values give a byte-identical file
    (``torch.save`` stamps every file with a random serialisation id), so a rerun with the same
    inputs does not invalidate DVC's hashes. :func:`load_tensors` reads it back without pickle and
    checks it against the checksum stored with it; ``kind`` names what the file is, so a reader
    expecting another kind refuses it."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    packed = _pack(obj, "", tensors)
    doc = {"__value__": packed, "__sha256__": _digest(_canonical(packed), tensors), "__kind__": kind}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata={_META: _canonical(doc)})
        except Exception as exc:  # safetensors' own error type: an OSError with its errno, like every other write
            code = re.search(r"\(os error (\d+)\)|Os \{ code: (\d+)", str(exc))
            if code is None:
                raise
            num = int(code.group(1) or code.group(2))
            raise OSError(num, os.strerror(num), str(path)) from None
    return Path(path)


def _is_safetensors(head: bytes, size: int) -> bool:
    """Whether a file's first 9 bytes open a safetensors file: a little-endian u64 header length
    that fits the file, then the JSON header's ``{``. Checked before the pickle test because that
    length's low byte is 0x80, pickle's first opcode, for one header length in 256."""
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= size - 8 and head[8:9] == b"{"


def load_tensors(path: str | os.PathLike, map_location: str | torch.device = "cpu", *, kind: str | None = None,
                 fields: dict[str, str] | None = None) -> Any:
    """Load a file written by :func:`save_tensors` without executing pickled code (older
    ``torch.save`` files are read with ``torch.load(weights_only=True)``), and check it: its data
    against the checksum written with it (:class:`CorruptFileError`), its kind against ``kind``
    (files that name none, written before kinds, pass), and its top-level ``fields``
    (:func:`check_fields`). Raises :class:`UntrustedFileError` for a file holding other pickled
    objects and :class:`UnreadableFileError` for a corrupt, truncated or unusable one (all
    ``ValueError``s naming the file, in one line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(9)
    if not _is_safetensors(head, path.stat().st_size) and (
            head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # a torch.save zip archive, or a bare pickle
        try:
            obj = torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as exc:
            # torch's message suggests weights_only=False, which would run the file's code: say
            # only what it holds (`from None`: not even a traceback passes that advice on)
            found = re.search(r"GLOBAL ([\w.]+)", str(exc))
            what = f"a reference to {found.group(1)}" if found else "pickled objects other than plain tensors"
            raise UntrustedFileError(path, f"refused for safety: it holds {what}, which could run code if "
                                           "loaded; this project writes tensors without pickle (safetensors), "
                                           "so this file is not one of its own or was tampered with") from None
        except Exception as exc:  # noqa: BLE001 - corrupt or truncated
            raise UnreadableFileError(path, f"cannot be loaded as a tensor file ({type(exc).__name__})") from None
        check_fields(obj, path, kind, fields)
        return obj
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if _META not in meta:
                raise ValueError(f"no {_META!r} metadata (not written by atom.io.save_tensors)")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        doc = json.loads(meta[_META])
    except Exception as exc:  # corrupt, truncated, or not a tensor file
        raise UnreadableFileError(path, f"cannot be loaded as a tensor file ({_one_line(exc)})") from None
    packed, found = doc, None
    if isinstance(doc, dict) and "__sha256__" in doc:  # (files written before checksums hold the skeleton alone)
        packed, found = doc.get("__value__"), doc.get("__kind__")
        if _digest(_canonical(packed), tensors) != doc["__sha256__"]:
            raise CorruptFileError(path, "corrupt: its data does not match the checksum written with it (a "
                                         "flipped or lost byte)")
    if kind is not None and found is not None and found != kind:
        raise UnreadableFileError(path, f"is a {found!r} file, not the {kind!r} file expected here")
    try:
        obj = _unpack(packed, tensors)
    except (ValueError, KeyError, TypeError) as exc:
        raise UnreadableFileError(path, f"cannot be loaded as a tensor file ({_one_line(exc)})") from None
    check_fields(obj, path, kind, fields)
    if str(map_location) != "cpu":
        obj = _to(obj, torch.device(map_location))
    return obj


def _canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(v, device) for v in obj)
    return obj


_TENSOR_SPEC = re.compile(r"(float|int)\[(\d)\]|(tensor)")
_TYPES = {"dict": dict, "list": list, "str": str, "bool": bool}


def _problem(value: Any, spec: str) -> str | None:
    """Why ``value`` does not fit ``spec`` (None: it does). Specs: ``float[4]``/``int[1]``/
    ``tensor`` (a floating / integer / any tensor, with that many dimensions), ``dict``, ``list``,
    ``str``, ``bool``, ``int``, ``number``; ``a|b`` either; ``none`` None."""
    options = spec.split("|")
    for one in options:
        m = _TENSOR_SPEC.fullmatch(one)
        if m:
            if isinstance(value, torch.Tensor) and (m.group(3) or (
                    value.is_floating_point() == (m.group(1) == "float") and value.dtype != torch.bool
                    and value.dim() == int(m.group(2)))):
                return None
        elif one == "none" and value is None:
            return None
        elif one == "int" and isinstance(value, int) and not isinstance(value, bool):
            return None
        elif one == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        elif one in _TYPES and isinstance(value, _TYPES[one]):
            return None
    if isinstance(value, torch.Tensor):
        got = f"a {value.dim()}-D {str(value.dtype).replace('torch.', '')} tensor"
    else:
        name = type(value).__name__
        got = "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    return f"should be {' or '.join(_spoken(o) for o in options)}, got {got}"


def _spoken(spec: str) -> str:
    m = _TENSOR_SPEC.fullmatch(spec)
    if m:
        return "a tensor" if m.group(3) else f"a {m.group(2)}-D {m.group(1)} tensor"
    return {"none": "None", "int": "an integer", "number": "a number"}.get(spec, f"a {spec}")


def check_fields(obj: Any, path: str | os.PathLike, kind: str | None, fields: dict[str, str] | None) -> None:
    """Raise :class:`UnreadableFileError` (one line naming the file) if ``obj`` is not a dict
    holding every key of ``fields`` with a value that fits its spec (see :func:`_problem`)."""
    if not fields:
        return
    what = f"a {kind} file" if kind else "the file expected here"
    if not isinstance(obj, dict):
        raise UnreadableFileError(path, f"not {what}: it holds a {type(obj).__name__}, not the fields "
                                        f"{sorted(fields)}")
    missing = [k for k in fields if k not in obj]
    if missing:
        raise UnreadableFileError(path, f"not {what}: it lacks {', '.join(map(repr, missing))}")
    for key, spec in fields.items():
        problem = _problem(obj[key], spec)
        if problem:
            raise UnreadableFileError(path, f"not {what}: {key!r} {problem}")


def write_text(text: str, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file, read in chunks (``algorithm``: any name ``hashlib.new`` knows)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256(path: str | os.PathLike) -> str:
    return digest(path, "sha256")
