"""Sets that travel (atom.export): the export holds the images a network trains on, and reads
back the same anywhere.

- ``set.pt`` loaded back equals what the evaluation trains on (``atom.formation.training_set``
  of the distill record), bit for bit, with factor 1 and with factor 2 (decoded tiles, class by
  class, ``ipc x factor**2`` per class); the stored mosaics go to ``stored/`` only with factor 2;
- the PNGs, read with torchvision's ``ImageFolder`` the way the manifest says (channels, class
  order), are within 8-bit quantisation of the same images in pixel space, and ``load_set`` of
  ``images/`` maps them back to the training space;
- an export whose manifest is missing, of another format, or disagrees with its files is
  refused in one line naming the file;
- the report's HLR and IOR follow their definitions.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import atom
from atom import preprocess
from atom.export import load_set, write_export
from atom.formation import training_set
from atom.io import CorruptFileError, UnreadableFileError

NET = dict(width=8, depth=2, act="relu", norm="instancenorm", pool="avg")


@pytest.fixture(scope="module")
def state(digits):
    return preprocess.fit(digits.train_images, normalize=True, zca=True, zca_eps=0.1)  # ZCA: the hard case


def _record(digits, state, factor: int, ipc: int = 2) -> dict:
    x = preprocess.apply(digits.train_images, state)
    res = atom.distill(x, digits.train_labels, ipc=ipc, iterations=3, batch_real=8, net=NET, factor=factor,
                       progress=False, seed=0, lr_img=0.5)
    return {"images": res.images, "labels": res.labels, "classes": digits.classes, "dataset": "digits",
            "method": "atom", "ipc": ipc, "config": res.config, "iteration": 3}


@pytest.fixture(scope="module", params=[1, 2], ids=["factor1", "factor2"])
def exported(request, digits, state, tmp_path_factory):
    record = _record(digits, state, request.param)
    out = write_export(record, state, tmp_path_factory.mktemp("export") / "atom-ipc2", dataset="digits",
                       protocol="smoke", seed=0, source="data/prepared/digits.preprocess.pt")
    return out, record, request.param


def test_the_tensor_export_is_what_the_evaluation_trains_on_bit_for_bit(exported):
    out, record, factor = exported
    trained_x, trained_y = training_set(record)
    for path in (out, out / "set.pt", out / "manifest.json"):
        s = load_set(path)
        assert torch.equal(s.images, trained_x) and torch.equal(s.labels, trained_y), path
        assert s.classes == [str(i) for i in range(10)] and len(s) == 10 * 2 * factor ** 2
    # class by class, ipc x factor**2 each: the layout DD-Ranking's hard-label metric takes
    assert torch.equal(s.labels, torch.arange(10).repeat_interleave(2 * factor ** 2))
    m = json.loads((out / "manifest.json").read_text())
    assert (m["ipc"], m["factor"], m["images_per_class"], m["count"]) == (2, factor, 2 * factor ** 2, len(s))
    assert m["preprocess"]["zca"] is True and m["preprocess"]["source"] == "data/prepared/digits.preprocess.pt"
    assert (m["seed"], m["protocol"], m["method"]) == (0, "smoke", "atom")
    stored = out / "stored"
    assert stored.is_dir() == (factor > 1) and (m["files"]["stored"] == "stored") == (factor > 1)
    if factor > 1:  # the mosaics as distillation keeps them: ipc per class
        assert sorted(len(list(p.glob("*.png"))) for p in stored.iterdir()) == [2] * 10
    # the preprocessing travels with the set: new pixels map into the same space
    assert torch.allclose(s.prepare(s.pixels()), s.images, atol=1e-4)


def test_the_pngs_read_by_torchvision_are_the_images_in_pixel_space_within_8_bits(exported):
    from PIL import Image
    from torchvision import datasets, transforms

    out, record, factor = exported
    s = load_set(out / "set.pt")
    m = s.manifest
    mode = "L" if m["shape"][0] == 1 else "RGB"
    folder = datasets.ImageFolder(str(out / "images"), transform=transforms.ToTensor(),
                                  loader=lambda p: Image.open(p).convert(mode))
    assert folder.classes == [atom.viz.safe_name(c) for c in m["classes"]]
    pixels = torch.stack([folder[i][0] for i in range(len(folder))])
    labels = torch.tensor([folder[i][1] for i in range(len(folder))])
    assert torch.equal(labels, s.labels)  # ImageFolder's order is the manifest's: class by class
    # numbered files sort 0, 1, 10, 11, 2, ... in ImageFolder: compare each image with its own
    order = [int(p.split("/")[-1][:-4]) for p, _ in folder.samples]
    ref = s.pixels().clamp(0, 1)
    per = m["images_per_class"]
    mine = torch.stack([ref[y * per + n] for n, y in zip(order, labels.tolist())])
    assert (pixels - mine).abs().max() <= 0.5 / 255 + 1e-5
    # and back to the training space through load_set: 8-bit pixels, the same images
    back = load_set(out / "images")
    assert torch.equal(back.labels, s.labels)
    assert (back.pixels() - ref).abs().max() <= 0.5 / 255 + 1e-4


@pytest.mark.parametrize("damage", ["no manifest", "another format", "fewer images", "other classes", "a png gone",
                                    "set.pt corrupt"])
def test_an_export_that_disagrees_with_itself_is_refused_in_one_line(exported, tmp_path, damage):
    out, _, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    manifest = bad / "manifest.json"
    m = json.loads(manifest.read_text())
    target, named = bad, "manifest.json"
    if damage == "no manifest":
        manifest.unlink()
        target, named = bad / "set.pt", "set.pt"
    elif damage == "another format":
        manifest.write_text(json.dumps(dict(m, format="something/2")))
    elif damage == "fewer images":
        manifest.write_text(json.dumps(dict(m, count=m["count"] - 1)))
    elif damage == "other classes":
        manifest.write_text(json.dumps(dict(m, classes=list(reversed(m["classes"])))))
    elif damage == "a png gone":
        next((bad / "images" / "3").glob("*.png")).unlink()
        target, named = bad / "images", "images/3"
    else:
        data = bytearray((bad / "set.pt").read_bytes())
        for i in range(len(data) - 60, len(data) - 10):
            data[i] ^= 0x33
        (bad / "set.pt").write_bytes(bytes(data))
        named = "set.pt"
    with pytest.raises(UnreadableFileError) as err:
        load_set(target)
    line = str(err.value)
    assert "\n" not in line and named in line, line
    if damage == "set.pt corrupt":
        assert isinstance(err.value, CorruptFileError)


def test_hlr_and_ior_follow_their_definitions():
    from stages.report import field_metrics, metrics_json

    rows = [{"method": "atom", "ipc": 1, "mean": 40.0}, {"method": "random", "ipc": 1, "mean": 15.0},
            {"method": "selected", "ipc": 1, "mean": 20.0}, {"method": "atom", "ipc": 10, "mean": 55.0},
            {"method": "full", "ipc": None, "mean": 84.0}]
    got = {(f["method"], f["ipc"]): (f["hlr"], f["ior"]) for f in field_metrics(rows)}
    assert got == {("atom", 1): (44.0, 25.0), ("selected", 1): (64.0, 5.0), ("atom", 10): (29.0, None)}
    numbers = metrics_json({"datasets": {"digits": {"field_metrics": field_metrics(rows)}}})
    assert numbers["digits"]["atom"]["ipc10"] == {"accuracy": 55.0, "hlr": 29.0}  # no random at IPC 10
