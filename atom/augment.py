"""Differentiable Siamese Augmentation (DSA), as in the spec's section 5.

Every family is written with differentiable tensor operations, so gradients flow from an
augmented image back to its pixels (the synthetic set is learned *through* augmentation).

Randomness is explicit: :meth:`DSA.sample` draws all random numbers from a
``torch.Generator`` the caller owns, into a :class:`Draw`; :meth:`DSA.apply` is
deterministic given a draw. One draw holds ``n`` *slots*; an ``index`` tensor maps each image
to its slot, which is how every mode is expressed:

- Siamese (distillation): one slot per class; real and synthetic images of class ``k`` both
  use slot ``k`` (``index = labels``), so they see the identical transform.
- Per image (evaluation): one slot per image, one family for the whole call (as in the
  parent DSA code) via ``family_groups``.
- Batched seeds: one slot per image, one family per seed via ``family_groups``.

Example::

    dsa = DSA()
    g = torch.Generator().manual_seed(0)
    draw = dsa.sample(num_classes, g)
    real_aug = dsa.apply(real, draw, index=real_labels)
    syn_aug = dsa.apply(syn, draw, index=syn_labels)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DSAParams", "Draw", "DSA", "FAMILIES"]

FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
# Columns of the uniform table held by a Draw (one row per slot).
_COLS = ("brightness", "saturation", "contrast", "crop_x", "crop_y", "cutout_x", "cutout_y",
         "flip", "scale_x", "scale_y", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """Strategy and magnitudes; the defaults are the spec's (section 5)."""

    strategy: str = "color_crop_cutout_flip_scale_rotate"
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    crop: float = 0.125
    cutout: float = 0.5
    flip: float = 0.5
    scale: float = 1.2
    rotate: float = 15.0

    def __post_init__(self):
        fams = self.families
        unknown = [f for f in fams if f not in FAMILIES]
        if not fams or unknown:
            raise ValueError(f"dsa strategy: unknown families {unknown or [self.strategy]!r}; "
                             f"choose from {FAMILIES}")
        for f in fields(self):
            if f.name != "strategy" and (not isinstance(getattr(self, f.name), (int, float))
                                         or getattr(self, f.name) < 0):
                raise ValueError(f"dsa {f.name}: must be a number >= 0, got {getattr(self, f.name)!r}")
        if self.scale < 1:
            raise ValueError(f"dsa scale: must be >= 1, got {self.scale}")
        if self.flip > 1:
            raise ValueError(f"dsa flip: a probability in [0, 1], got {self.flip}")

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(f for f in self.strategy.split("_") if f)


@dataclass
class Draw:
    """One draw of augmentation randomness: a family per slot and a row of uniforms per slot."""

    family: Tensor  # (n,) long, index into the strategy's families
    uniforms: Tensor  # (n, len(_COLS)) float in [0, 1)

    def __len__(self) -> int:
        return self.family.shape[0]

    def select(self, slots: Tensor | slice) -> "Draw":
        return Draw(self.family[slots], self.uniforms[slots])


class DSA:
    """Differentiable Siamese Augmentation with the six families of the spec."""

    def __init__(self, params: DSAParams | None = None):
        self.params = params or DSAParams()
        self.families = self.params.families

    # ------------------------------------------------------------------ randomness
    def sample(self, n: int, generator: torch.Generator, family_groups: Tensor | None = None) -> Draw:
        """Draw ``n`` slots. ``family_groups`` (length ``n``, values ``0..G-1``) makes slots of
        a group share one family; by default every slot picks its own family."""
        if n < 1:
            raise ValueError(f"n: need at least one slot, got {n}")
        dev = generator.device  # drawn where the generator lives: a CUDA draw needs no host copy
        if family_groups is None:
            family = torch.randint(len(self.families), (n,), generator=generator, device=dev)
        else:
            family_groups = torch.as_tensor(family_groups, dtype=torch.long).cpu()
            if family_groups.shape != (n,):
                raise ValueError(f"family_groups: expected shape ({n},), got {tuple(family_groups.shape)}")
            n_groups = int(family_groups.max()) + 1
            family = torch.randint(len(self.families), (n_groups,), generator=generator, device=dev)[family_groups.to(dev)]
        uniforms = torch.rand((n, len(_COLS)), generator=generator, device=dev)
        return Draw(family, uniforms)

    # ------------------------------------------------------------------ application
    def apply(self, x: Tensor, draw: Draw, index: Tensor | None = None, dense: bool | None = None) -> Tensor:
        """Augment ``x`` (N, C, H, W); image ``i`` uses slot ``index[i]`` (default: slot ``i``).

        ``dense`` (default: when the draw lives off the CPU) runs every family on the whole
        batch and keeps each image's own with ``torch.where``: more arithmetic, but no
        data-dependent shapes and no device-to-host sync (the gather path below reads the
        families present on the host). Both give the same values."""
        if x.dim() != 4:
            raise ValueError(f"x: expected a 4-D batch (N, C, H, W), got shape {tuple(x.shape)}")
        n = x.shape[0]
        if dense if dense is not None else draw.family.device.type != "cpu":
            dev = draw.family.device
            slot = torch.arange(n, device=dev) if index is None else torch.as_tensor(index).to(dev)
            if index is None and len(draw) != n:
                raise ValueError(f"draw has {len(draw)} slots for {n} images and no index was given")
            fam = draw.family[slot].to(x.device).view(-1, 1, 1, 1)
            u = draw.uniforms[slot].to(device=x.device, dtype=x.dtype)
            out = x
            for f, name in enumerate(self.families):
                out = torch.where(fam == f, self._op(name, x, u), out)
            return out
        if index is None:
            if len(draw) != n:
                raise ValueError(f"draw has {len(draw)} slots for {n} images and no index was given")
            slot = torch.arange(n)
        else:
            slot = torch.as_tensor(index, dtype=torch.long).cpu()
            if slot.shape != (n,) or (n and (slot.min() < 0 or slot.max() >= len(draw))):
                raise ValueError(f"index: expected {n} slot numbers in [0, {len(draw)})")
        fam = draw.family[slot]
        u = draw.uniforms[slot].to(device=x.device, dtype=x.dtype)
        present = torch.unique(fam).tolist()
        if len(present) == 1:  # common case (Siamese with one class, per-call family): no gather
            return self._op(self.families[present[0]], x, u)
        pieces, order = [], []
        for f in present:
            rows = (fam == f).nonzero().squeeze(1)
            rows_dev = rows.to(x.device)
            pieces.append(self._op(self.families[f], x.index_select(0, rows_dev), u.index_select(0, rows_dev)))
            order.append(rows)
        inverse = torch.argsort(torch.cat(order)).to(x.device)
        return torch.cat(pieces).index_select(0, inverse)

    def __call__(self, x: Tensor, generator: torch.Generator, siamese: bool = False) -> Tensor:
        """Convenience: Siamese (one draw for the whole batch) or per-image (one family per call)."""
        n = x.shape[0]
        if siamese:
            return self.apply(x, self.sample(1, generator), torch.zeros(n, dtype=torch.long))
        return self.apply(x, self.sample(n, generator, family_groups=torch.zeros(n, dtype=torch.long)))

    def siamese(self, a: Tensor, b: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Apply one shared draw to two whole batches (e.g. real and synthetic of one class)."""
        draw = self.sample(1, generator)
        return (self.apply(a, draw, torch.zeros(a.shape[0], dtype=torch.long)),
                self.apply(b, draw, torch.zeros(b.shape[0], dtype=torch.long)))

    # ------------------------------------------------------------------ the families
    def _op(self, family: str, x: Tensor, u: Tensor) -> Tensor:
        return getattr(self, f"_{family}")(x, u)

    @staticmethod
    def _col(u: Tensor, name: str) -> Tensor:
        return u[:, _COLS.index(name)].view(-1, 1, 1, 1)

    def _color(self, x: Tensor, u: Tensor) -> Tensor:
        p = self.params
        x = x + (self._col(u, "brightness") - 0.5) * p.brightness
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (self._col(u, "saturation") * p.saturation) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) * (self._col(u, "contrast") + p.contrast) + mean

    def _crop(self, x: Tensor, u: Tensor) -> Tensor:
        n, c, h, w = x.shape
        sh, sw = int(self.params.crop * h + 0.5), int(self.params.crop * w + 0.5)
        if sh == 0 and sw == 0:
            return x
        dy = (u[:, _COLS.index("crop_y")] * (2 * sh + 1)).floor().long().clamp(max=2 * sh) - sh
        dx = (u[:, _COLS.index("crop_x")] * (2 * sw + 1)).floor().long().clamp(max=2 * sw) - sw
        padded = F.pad(x, (sw, sw, sh, sh))
        dev = x.device
        rows = (torch.arange(h, device=dev)[None, :] + sh + dy.to(dev)[:, None])  # (n, h)
        cols = (torch.arange(w, device=dev)[None, :] + sw + dx.to(dev)[:, None])  # (n, w)
        return padded[torch.arange(n, device=dev)[:, None, None, None],
                      torch.arange(c, device=dev)[None, :, None, None],
                      rows[:, None, :, None], cols[:, None, None, :]]

    def _cutout(self, x: Tensor, u: Tensor) -> Tensor:
        n, _, h, w = x.shape
        ch, cw = int(self.params.cutout * h + 0.5), int(self.params.cutout * w + 0.5)
        if ch == 0 or cw == 0:
            return x
        dev = x.device
        # centre drawn like the parent code: randint(0, size + (1 - cut % 2))
        cy = (u[:, _COLS.index("cutout_y")] * (h + 1 - ch % 2)).floor().long().to(dev)
        cx = (u[:, _COLS.index("cutout_x")] * (w + 1 - cw % 2)).floor().long().to(dev)
        r = torch.arange(h, device=dev)[None, :] - (cy - ch // 2)[:, None]
        c = torch.arange(w, device=dev)[None, :] - (cx - cw // 2)[:, None]
        inside = ((r >= 0) & (r < ch))[:, :, None] & ((c >= 0) & (c < cw))[:, None, :]
        return x * (~inside).to(x.dtype)[:, None]

    def _flip(self, x: Tensor, u: Tensor) -> Tensor:
        do = (self._col(u, "flip") < self.params.flip)
        return torch.where(do, x.flip(3), x)

    def _affine(self, x: Tensor, theta: Tensor) -> Tensor:
        grid = F.affine_grid(theta, list(x.shape), align_corners=True)
        return F.grid_sample(x, grid, align_corners=True)

    def _scale(self, x: Tensor, u: Tensor) -> Tensor:
        s = self.params.scale
        sx = u[:, _COLS.index("scale_x")] * (s - 1.0 / s) + 1.0 / s
        sy = u[:, _COLS.index("scale_y")] * (s - 1.0 / s) + 1.0 / s
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
        return self._affine(x, theta)

    def _rotate(self, x: Tensor, u: Tensor) -> Tensor:
        angle = (u[:, _COLS.index("rotate")] - 0.5) * 2 * self.params.rotate * math.pi / 180
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.stack([torch.stack([cos, sin, torch.zeros_like(cos)], 1),
                             torch.stack([-sin, cos, torch.zeros_like(cos)], 1)], 1)
        return self._affine(x, theta)
