"""Safe extraction (atom.archive): good archives extract, hostile or broken ones raise a
ValueError naming the archive and leave nothing behind."""
from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from atom.archive import check_member_name, is_archive, safe_copytree, safe_extract


def _tar(path: Path, members: list[tuple], mode: str = "w:xz") -> Path:
    """members: (name, bytes) files, (name, None) folders, (name, "->target") symlinks,
    (name, "=>target") hard links, (name, "chr") a character device."""
    with tarfile.open(path, mode) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif isinstance(data, str) and data.startswith("->"):
                ti.type, ti.linkname = tarfile.SYMTYPE, data[2:]
                tf.addfile(ti)
            elif isinstance(data, str) and data.startswith("=>"):
                ti.type, ti.linkname = tarfile.LNKTYPE, data[2:]
                tf.addfile(ti)
            elif data == "chr":
                ti.type = tarfile.CHRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


def _zip(path: Path, members: list[tuple[str, bytes]], symlink: tuple[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink[0])
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, symlink[1])
    return path


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir())


@pytest.mark.parametrize("suffix,mode", [(".tar.xz", "w:xz"), (".tar.gz", "w:gz"), (".tar", "w")])
def test_tar_extracts_files_dirs_and_inner_links(tmp_path, suffix, mode):
    arc = _tar(tmp_path / f"a{suffix}", [("top", None), ("top/a.txt", b"hello"),
                                          ("top/sub/b.txt", b"x" * 1000), ("top/link", "->a.txt"),
                                          ("top/hard", "=>top/a.txt")], mode)
    out = safe_extract(arc, tmp_path / "out")
    assert (out / "top" / "a.txt").read_bytes() == b"hello"
    assert (out / "top" / "sub" / "b.txt").stat().st_size == 1000
    assert (out / "top" / "link").resolve() == (out / "top" / "a.txt").resolve()
    assert (out / "top" / "hard").read_bytes() == b"hello"
    assert _leftovers(tmp_path) == sorted([arc.name, "out"])  # no temp folders left


def test_root_keeps_one_top_folder_and_replaces_old_dest(tmp_path):
    arc = _tar(tmp_path / "a.tar.gz", [("pkg/x.txt", b"1")], "w:gz")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "stale.txt").write_text("old")
    safe_extract(arc, dest, root="pkg")
    assert sorted(os.listdir(dest)) == ["x.txt"]
    with pytest.raises(ValueError, match="top-level folder 'nope'"):
        safe_extract(arc, tmp_path / "d2", root="nope")
    assert not (tmp_path / "d2").exists()


@pytest.mark.parametrize("member,msg", [
    (("/etc/evil", b"x"), "absolute path"),
    (("../evil", b"x"), r"'\.\.'"),
    (("a/../../evil", b"x"), r"'\.\.'"),
    (("a/link", "->../../etc/passwd"), "outside"),
    (("a/link", "->/etc/passwd"), "absolute path"),
    (("a/hard", "=>../outside"), r"'\.\.'"),
    (("a/dev", "chr"), "device"),
])
def test_tar_traversal_rejected_and_nothing_written(tmp_path, member, msg):
    arc = _tar(tmp_path / "bad.tar.xz", [("a", None), ("a/ok.txt", b"fine"), member])
    dest = tmp_path / "raw" / "images"
    dest.parent.mkdir()
    with pytest.raises(ValueError, match=msg) as err:
        safe_extract(arc, dest)
    assert str(arc) in str(err.value)
    assert _leftovers(dest.parent) == []
    assert not (tmp_path / "evil").exists()


def test_tar_failure_keeps_existing_dest(tmp_path):
    arc = _tar(tmp_path / "bad.tar.xz", [("ok.txt", b"x"), ("../evil", b"x")])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("keep")
    with pytest.raises(ValueError):
        safe_extract(arc, dest)
    assert _leftovers(dest) == ["keep.txt"]
    assert _leftovers(tmp_path) == sorted(["bad.tar.xz", "dest"])


@pytest.mark.parametrize("suffix,mode", [(".tar.xz", "w:xz"), (".tar.gz", "w:gz"), (".zip", None)])
def test_truncated_archive_rejected(tmp_path, suffix, mode):
    payload = [(f"c/{i}.bin", os.urandom(4000)) for i in range(20)]
    full = tmp_path / f"full{suffix}"
    if mode is None:
        _zip(full, payload)
    else:
        _tar(full, payload, mode)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    with pytest.raises(ValueError, match="truncated or corrupt") as err:
        safe_extract(cut, tmp_path / "out")
    assert str(cut) in str(err.value)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([full.name, cut.name])


def test_zip_extracts(tmp_path):
    arc = _zip(tmp_path / "a.zip", [("d/x.txt", b"x"), ("d/e/y.txt", b"yy")])
    out = safe_extract(arc, tmp_path / "out")
    assert (out / "d" / "e" / "y.txt").read_bytes() == b"yy"


@pytest.mark.parametrize("name,msg", [("../evil.txt", r"'\.\.'"), ("/abs.txt", "absolute"),
                                      ("..\\win.txt", r"'\.\.'"), ("C:/x.txt", "absolute")])
def test_zip_traversal_rejected(tmp_path, name, msg):
    arc = _zip(tmp_path / "bad.zip", [("ok.txt", b"x"), (name, b"x")])
    with pytest.raises(ValueError, match=msg):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("target,msg", [("../../etc/passwd", "outside"), ("ok.txt", "not supported")])
def test_zip_symlinks_rejected(tmp_path, target, msg):
    arc = _zip(tmp_path / "bad.zip", [("ok.txt", b"x")], symlink=("link", target))
    with pytest.raises(ValueError, match=msg):
        safe_extract(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive_and_missing(tmp_path):
    (tmp_path / "x.rar").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a supported archive"):
        safe_extract(tmp_path / "x.rar", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.zip"):
        safe_extract(tmp_path / "nope.zip", tmp_path / "out")
    assert is_archive("a.TAR.XZ") and is_archive("b.zip") and not is_archive("c.jpg")
    assert str(check_member_name("a.zip", "x/y.png")) == "x/y.png"


def test_copytree_rejects_links_out_of_tree(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.txt").write_text("f")
    (src / "a" / "inner").symlink_to(src / "a" / "f.txt")
    out = safe_copytree(src, tmp_path / "out")
    assert (out / "a" / "inner").read_text() == "f"
    (tmp_path / "secret.txt").write_text("s")
    (src / "a" / "outer").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ValueError, match="outside"):
        safe_copytree(src, tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
