"""ATOM: Attention Mixer dataset distillation, with DataDAM and DM, as a reproducible library.

Public API::

    import atom
    d = atom.load_digits()                                   # offline, 8x8 grayscale
    res = atom.distill(d.train_images, d.train_labels, ipc=1, method="atom", iterations=300)
    acc = atom.evaluate(res.images, res.labels, d.test_images, d.test_labels, epochs=300)
    print(acc["mean"], acc["std"])

The modules, by job (each imports only what it uses; this root imports none of them until a
name below is first used, PEP 562, so ``import atom.losses`` runs ``losses`` and its own
imports and nothing else, and a workflow that tracks code by imports reruns only what a change
touches):

- data in: ``catalog`` (the fixed-size datasets' facts, torch-free), ``data`` (the registry,
  download and load), ``imaging`` (decoding, ImageFolder scanning), ``archive`` (safe
  extraction), ``preprocess`` (normalisation, ZCA whitening and its inverse);
- the method: ``networks``, ``augment`` (DSA), ``losses`` (attention matching: ATOM, DataDAM,
  DM), ``distillation`` (the loop: :func:`distill`), ``formation`` (multi-formation),
  ``selection`` (herding, k-center), ``pool`` (trained encoders: ATOM+), ``speed`` (what the
  ``"auto"`` settings resolve to), ``sets`` (shared checks and draws);
- evaluation: ``eval_protocol`` (one training run of the evaluation protocol), ``batched``
  (seeds trained together), ``evaluation`` (over seeds: :func:`evaluate`, baselines),
  ``validation`` (the split that picks the kept iteration), ``nas`` (the proxy search);
- around them: ``events`` (what long computations report as they go), ``io`` (safetensors
  files, atomic writes, checksums), ``runtime`` (threads, allocator), ``viz`` (pictures),
  ``export`` (a set as a network trains on it, for other code: :func:`load_set`).

The library takes devices, dtypes and hyperparameters as arguments; it reads no
configuration files.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first use)
_EXPORTS = {
    "distill": "distillation", "DistillResult": "distillation",
    "evaluate": "evaluation", "baseline_set": "evaluation",
    "train_evaluate": "eval_protocol",
    "load_digits": "data", "ImageDataset": "data",
    "DSA": "augment", "DSAParams": "augment",
    "ConvNet": "networks",
    "LossConfig": "losses", "MatchingLoss": "losses", "spatial_attention": "losses",
    "channel_attention": "losses",
    "EncoderPool": "pool", "train_pool": "pool",
    "load_set": "export", "DistilledSet": "export",
}
# the submodules, also reachable as attributes (``atom.io.load_tensors`` after ``import atom``)
_SUBMODULES = ("archive", "augment", "batched", "catalog", "data", "distillation", "eval_protocol", "evaluation",
               "events", "export", "formation", "imaging", "io", "losses", "nas", "networks", "pool", "preprocess",
               "runtime", "selection", "sets", "speed", "validation", "viz")
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on demand
    from .augment import DSA, DSAParams
    from .data import ImageDataset, load_digits
    from .distillation import DistillResult, distill
    from .eval_protocol import train_evaluate
    from .evaluation import baseline_set, evaluate
    from .export import DistilledSet, load_set
    from .losses import LossConfig, MatchingLoss, channel_attention, spatial_attention
    from .networks import ConvNet
    from .pool import EncoderPool, train_pool


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)  # the import binds it here
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'atom' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | set(_SUBMODULES))
