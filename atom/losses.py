"""Attention maps and the ATOM / DataDAM / DM matching losses (spec section 3).

For a feature map ``f`` of shape (N, C, H, W):

- :func:`spatial_attention` ``a_s = vec(sum_c |f_c|^p_s) / ||.||_2``   -> (N, H*W)
- :func:`channel_attention` ``a_c = vec(sum_hw |f_:,h,w|^p_c) / ||.||_2`` -> (N, C)

The matching loss compares *class means* of those per-image vectors between the real and the
synthetic batch (squared L2 distance, summed over classes and layers), plus ``lam`` times the
same distance between class means of the final embedding (MMD with a linear kernel):

======== ============================================ ==================
method   attention term per block l < L               final term
======== ============================================ ==================
dm       none                                         embedding, lam = 1
datadam  spatial                                      lam * embedding
atom     spatial + w_c * channel ("sum"), or one      lam * embedding
         normalised concatenation ("concat")
======== ============================================ ==================

Every term is multiplied by ``scale`` (100 in DataDAM's code, 1 in DM's).

The loss is split in two so that the real branch can run without autograd:
:meth:`MatchingLoss.statistics` turns features into class-mean vectors and
:meth:`MatchingLoss.compare` turns two sets of statistics into the scalar loss.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["spatial_attention", "channel_attention", "LossConfig", "MatchingLoss", "matching_loss",
           "class_means", "METHODS", "METHOD_DEFAULTS"]

METHODS = ("atom", "datadam", "dm")
# The spec's table (section 3) and the constants of section 2, per method.
METHOD_DEFAULTS = {
    "atom": dict(p_s=4.0, p_c=4.0, w_c=1.0, lam=0.01, mixing="sum", scale=100.0),
    "datadam": dict(p_s=4.0, p_c=4.0, w_c=0.0, lam=0.01, mixing="sum", scale=100.0),
    "dm": dict(p_s=4.0, p_c=4.0, w_c=0.0, lam=1.0, mixing="sum", scale=1.0),
}


def _check_power(power: float, name: str = "power") -> None:
    if not isinstance(power, (int, float)) or power < 1:
        raise ValueError(f"{name}: the attention power must be a number >= 1, got {power!r}")


def _check_features(features: Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"features: expected a 4-D map (N, C, H, W), got shape {tuple(features.shape)}")


def _pow_nonneg(f: Tensor, p: float) -> Tensor:
    """``f ** p`` for ``f >= 0``. Small integer powers by repeated squaring are cheaper than
    pow(); without autograd (the real branch) the second squaring runs in place, one fewer
    16 MB map per chunk."""
    if p == 1:
        return f
    if p == 2:
        return f * f
    if p == 4:
        a = f * f
        return a * a if torch.is_grad_enabled() else a.mul_(a)
    return f.pow(p)


def _pow_abs(f: Tensor, p: float) -> Tensor:
    """``|f| ** p``: abs() is a no-op after ReLU (``MatchingLoss(nonnegative=True)`` skips it)
    but keeps the definition valid for any activation."""
    return _pow_nonneg(f.abs(), p)


def spatial_attention(features: Tensor, power: float = 4.0) -> Tensor:
    """Per-image spatial attention, L2-normalised: (N, C, H, W) -> (N, H*W)."""
    _check_features(features)
    _check_power(power)
    return F.normalize(_pow_abs(features, power).sum(1).flatten(1), dim=1)


def channel_attention(features: Tensor, power: float = 4.0) -> Tensor:
    """Per-image channel attention, L2-normalised: (N, C, H, W) -> (N, C)."""
    _check_features(features)
    _check_power(power)
    return F.normalize(_pow_abs(features, power).sum((2, 3)), dim=1)


def class_means(v: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean of the rows of ``v`` per class: (N, D) -> (num_classes, D); absent classes get 0."""
    onehot = F.one_hot(labels, num_classes).to(v.dtype)
    counts = onehot.sum(0).clamp(min=1)
    return (onehot.t() @ v) / counts[:, None]


@dataclass(frozen=True)
class LossConfig:
    """Which terms and constants the matching loss uses (see the module table)."""

    method: str = "atom"
    p_s: float = 4.0
    p_c: float = 4.0
    w_c: float = 1.0
    lam: float = 0.01
    mixing: str = "sum"
    scale: float = 100.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: unknown method {self.method!r}; choose from {METHODS}")
        _check_power(self.p_s, "p_s")
        _check_power(self.p_c, "p_c")
        if self.mixing not in ("sum", "concat"):
            raise ValueError(f"mixing: must be 'sum' or 'concat', got {self.mixing!r}")
        for name in ("w_c", "lam", "scale"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: must be a number >= 0, got {value!r}")

    @classmethod
    def for_method(cls, method: str, **overrides) -> "LossConfig":
        """The spec's defaults for ``method``, with ``overrides`` (``None`` values ignored)."""
        if method not in METHODS:
            raise ValueError(f"method: unknown method {method!r}; choose from {METHODS}")
        unknown = set(overrides) - set(METHOD_DEFAULTS[method])
        if unknown:
            raise ValueError(f"loss: unknown parameters {sorted(unknown)}")
        values = {**METHOD_DEFAULTS[method], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(method=method, **values)

    def to_dict(self) -> dict:
        return asdict(self)


class MatchingLoss:
    """``compare(statistics(real), statistics(syn))`` is the spec's loss for one iteration."""

    def __init__(self, config: LossConfig, num_classes: int, nonnegative: bool = False):
        self.config = config
        self.num_classes = num_classes
        # features known to be >= 0 (after ReLU): |f| = f, so the abs pass is skipped (same values)
        self._pow = _pow_nonneg if nonnegative else _pow_abs
        c = config
        if c.method == "atom" and c.mixing == "sum":
            self._per_layer_weights = (1.0, c.w_c)
        elif c.method in ("atom", "datadam"):
            self._per_layer_weights = (1.0,)
        else:
            self._per_layer_weights = ()

    def _vectors(self, feats: list[Tensor], emb: Tensor) -> list[Tensor]:
        c, out = self.config, []
        if c.method == "dm":
            return [emb]
        for f in feats[:-1]:  # attention on blocks 1..L-1; block L enters through the embedding
            ps = self._pow(f, c.p_s)
            spatial = ps.sum(1).flatten(1)
            if c.method == "datadam":
                out.append(F.normalize(spatial, dim=1))
                continue
            pc = ps if c.p_c == c.p_s else self._pow(f, c.p_c)  # one |f|^p map serves both
            channel = pc.sum((2, 3))
            if c.mixing == "sum":
                out += [F.normalize(spatial, dim=1), F.normalize(channel, dim=1)]
            else:  # concat, then one normalisation
                out.append(F.normalize(torch.cat([spatial, channel], 1), dim=1))
        out.append(emb)
        return out

    def class_sums(self, feats: list[Tensor], emb: Tensor, labels: Tensor) -> list[Tensor]:
        """Per-class *sums* of every term's vectors, each (num_classes, D). Sums of chunks add
        up, so a large real batch can be reduced chunk by chunk."""
        onehot = F.one_hot(labels, self.num_classes).to(emb.dtype)
        return [onehot.t() @ v for v in self._vectors(feats, emb)]

    def statistics(self, feats: list[Tensor], emb: Tensor, labels: Tensor) -> list[Tensor]:
        """Class-mean vectors of every term, each (num_classes, D)."""
        # checked on the CPU only: on an accelerator the check would stall the stream
        if labels.device.type == "cpu" and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels: values must lie in [0, {self.num_classes}), got "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        return [class_means(v, labels, self.num_classes) for v in self._vectors(feats, emb)]

    def weights(self, n_terms: int) -> list[float]:
        per_layer = list(self._per_layer_weights)
        n_layers = (n_terms - 1) // max(len(per_layer), 1) if per_layer else 0
        return per_layer * n_layers + [self.config.lam]

    def compare(self, real: list[Tensor], syn: list[Tensor]) -> Tensor:
        if len(real) != len(syn):
            raise ValueError(f"statistics: {len(real)} real terms vs {len(syn)} synthetic terms")
        total = syn[0].new_zeros(())
        for w, r, s in zip(self.weights(len(syn)), real, syn):
            if w:
                total = total + w * (r - s).pow(2).sum()
        return self.config.scale * total

    def __call__(self, real_feats, real_emb, real_labels, syn_feats, syn_emb, syn_labels) -> Tensor:
        return self.compare(self.statistics(real_feats, real_emb, real_labels),
                            self.statistics(syn_feats, syn_emb, syn_labels))


def matching_loss(real_feats: list[Tensor], real_emb: Tensor, real_labels: Tensor,
                  syn_feats: list[Tensor], syn_emb: Tensor, syn_labels: Tensor,
                  num_classes: int, config: LossConfig | None = None) -> Tensor:
    """Functional form of :class:`MatchingLoss`."""
    return MatchingLoss(config or LossConfig(), num_classes)(real_feats, real_emb, real_labels,
                                                            syn_feats, syn_emb, syn_labels)
