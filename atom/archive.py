"""Safe, atomic extraction of ``.tar``/``.tar.gz``/``.tar.xz``/``.tar.bz2``/``.zip`` archives.

An archive comes from outside the project (a user's dataset, a download), so every member is
checked before anything is written: no absolute names, no ``..`` components, no links that
resolve outside the target, no devices or FIFOs. Tar archives are then extracted with
``filter="data"`` as a second line of defence. Extraction goes to a temporary folder beside
the destination, which is renamed onto it only when everything succeeded, so a truncated or
malicious archive leaves nothing half-extracted::

    from atom.archive import safe_extract
    root = safe_extract("dataset.tar.xz", "data/raw/mine/images")

Every problem is a ``ValueError`` naming the archive and, where there is one, the member.
"""
from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from .io import replace_dir, temp_dir

__all__ = ["ARCHIVE_SUFFIXES", "is_archive", "check_member_name", "safe_extract", "safe_copytree",
           "replace_dir"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2", ".tar", ".zip")


def is_archive(path: str | os.PathLike) -> bool:
    """True when ``path``'s name ends with one of :data:`ARCHIVE_SUFFIXES`."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def check_member_name(archive: str | os.PathLike, name: str) -> PurePosixPath:
    """Return ``name`` as a relative POSIX path, or raise if it could escape the target."""
    # Backslashes are separators for archives written on Windows: treat them as such so that
    # "..\\x" cannot slip through as one odd-looking file name.
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise ValueError(f"{archive}: member {name!r} has an absolute path (path traversal); refusing to extract")
    if ".." in p.parts:
        raise ValueError(f"{archive}: member {name!r} contains '..' (path traversal); refusing to extract")
    return p


def _check_link(archive, name: str, target: str) -> None:
    # A link target is resolved relative to the folder holding the link; it must stay inside.
    t = target.replace("\\", "/")
    if t.startswith("/"):
        raise ValueError(f"{archive}: member {name!r} is a link to the absolute path {target!r} "
                         "(outside the target folder); refusing to extract")
    parts: list[str] = []
    for part in (*PurePosixPath(name.replace("\\", "/")).parent.parts, *PurePosixPath(t).parts):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ValueError(f"{archive}: member {name!r} is a link to {target!r}, outside the "
                                 "target folder; refusing to extract")
            parts.pop()
        else:
            parts.append(part)


def _tar_members(archive: Path, tf: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    # A generator, so checking and extracting share one pass over a compressed stream.
    for m in tf:
        check_member_name(archive, m.name)
        if m.issym():
            _check_link(archive, m.name, m.linkname)
        elif m.islnk():
            # Hard-link targets are archive member names, relative to the archive root.
            check_member_name(archive, m.linkname)
        elif not (m.isfile() or m.isdir()):
            raise ValueError(f"{archive}: member {m.name!r} is a device, FIFO or other special file; "
                             "refusing to extract")
        yield m


_CORRUPT = (tarfile.ReadError, tarfile.CompressionError, EOFError, lzma.LZMAError, zlib.error,
            zipfile.BadZipFile, OSError)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tf:
        tf.extractall(dest, members=_tar_members(archive, tf), filter="data")


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check every member before writing any of them
            check_member_name(archive, info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                _check_link(archive, info.filename, target)
                # zipfile would write the link as a small text file, which is never what was meant.
                raise ValueError(f"{archive}: member {info.filename!r} is a symbolic link (to {target!r}); "
                                 "links in zip archives are not supported")
            # Only Unix-made zips carry a file type; permission bits alone (0o600) mean a file.
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise ValueError(f"{archive}: member {info.filename!r} is a special file; refusing to extract")
        for info in infos:
            zf.extract(info, dest)  # reads and CRC-checks each member


def _atomic_dir(dest: Path, fill: Callable[[Path], Path], prepare: Callable[[Path], None] | None) -> Path:
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir(dest.parent, f".{dest.name}.")
    try:
        root = fill(tmp)
        if prepare is not None:
            prepare(root)
        replace_dir(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike, *, root: str | None = None,
                 prepare: Callable[[Path], None] | None = None) -> Path:
    """Extract ``archive`` into the folder ``dest`` (replaced atomically if it exists).

    ``root``: keep only this top-level folder of the archive (e.g. ``"tiny-imagenet-200"``)
    as ``dest``. ``prepare(folder)`` may rearrange the extracted files before the final rename;
    if it raises, nothing reaches ``dest``.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    if not is_archive(archive):
        raise ValueError(f"{archive}: not a supported archive (expected one of {', '.join(ARCHIVE_SUFFIXES)})")

    def fill(tmp: Path) -> Path:
        out = tmp / "x"
        out.mkdir()
        try:
            if archive.name.lower().endswith(".zip"):
                _extract_zip(archive, out)
            else:
                _extract_tar(archive, out)
        except tarfile.FilterError as exc:  # filter="data" caught something our checks did not
            raise ValueError(f"{archive}: unsafe member refused by the tar data filter ({exc})") from exc
        except _CORRUPT as exc:
            raise ValueError(f"{archive}: truncated or corrupt archive ({type(exc).__name__}: {exc})") from exc
        if root is not None:
            sub = out / root
            if not sub.is_dir():
                raise ValueError(f"{archive}: expected a top-level folder {root!r} in the archive")
            return sub
        return out

    return _atomic_dir(Path(dest), fill, prepare)


def safe_copytree(src: str | os.PathLike, dest: str | os.PathLike, *,
                  prepare: Callable[[Path], None] | None = None) -> Path:
    """Copy the folder ``src`` to ``dest`` atomically; symbolic links are followed only when
    they resolve inside ``src`` (a link out of the tree is an error naming it)."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: folder not found")
    base = src.resolve()
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            if p.is_symlink():
                target = p.resolve()
                if target != base and base not in target.parents:
                    raise ValueError(f"{p}: symbolic link to {target}, outside {src}; refusing to copy")

    def fill(tmp: Path) -> Path:
        out = tmp / "x"
        shutil.copytree(src, out, symlinks=False)
        return out

    return _atomic_dir(Path(dest), fill, prepare)
