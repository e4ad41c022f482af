"""ATOM: Attention Mixer dataset distillation, with DataDAM and DM, as a reproducible library.

Public API::

    import atom
    d = atom.load_digits()                                   # offline, 8x8 grayscale
    res = atom.distill(d.train_images, d.train_labels, ipc=1, method="atom", iterations=300)
    acc = atom.evaluate(res.images, res.labels, d.test_images, d.test_labels, epochs=300)
    print(acc["mean"], acc["std"])

Submodules: ``data``, ``imaging``, ``preprocess``, ``augment``, ``networks``, ``losses``,
``distill``, ``formation`` (multi-formation), ``speed`` (what ``"auto"`` settings resolve to),
``training``, ``evaluate``, ``batched``, ``io``, ``pool`` (trained encoders to distil inside: ATOM+). The library takes devices, dtypes and hyperparameters as arguments; it
reads no configuration files.
"""
from .augment import DSA, DSAParams
from .data import ImageDataset, load_digits
from .distill import DistillResult, distill
from .evaluate import baseline_set, evaluate, train_evaluate
from .losses import LossConfig, MatchingLoss, channel_attention, spatial_attention
from .networks import ConvNet
from .pool import EncoderPool, train_pool

__version__ = "0.1.0"
__all__ = ["distill", "evaluate", "train_evaluate", "baseline_set", "load_digits", "ImageDataset",
           "DSA", "DSAParams", "ConvNet", "LossConfig", "MatchingLoss", "spatial_attention",
           "channel_attention", "DistillResult", "EncoderPool", "train_pool"]
