"""Reference distillation iteration, structured like the parent DataDAM code.

This is the yardstick the project's fast iteration (:class:`atom.distillation.DistillStep`) is measured
and checked against. It deliberately keeps the parent code's shape:

- one augmentation call per class and branch (real, then synthetic, same draw: Siamese);
- forward hooks on the activation modules collect the post-activation maps, and the
  embedding comes from a separate ``embed`` forward per class and branch;
- the attention maps are computed per layer with ``abs().pow(p)``, one map per attention
  (spatial and channel each recompute ``|f|^p``);
- every per-layer loss term is read back to the host with ``.item()`` (the parent logs a
  running loss that way), which on an accelerator stalls the stream once per term.

It consumes the caller's generator exactly as ``DistillStep`` does (network weights, then the real
batch of every class from :class:`atom.distillation.RealSampler`, then one :class:`atom.augment.Draw`
with a slot per class), so with the
same generator state both see the same network, the same real images and the same
augmentation, and their losses and gradients on the synthetic pixels agree to rounding.

Usage::

    from benchmarks.reference import ReferenceStep
    ref = ReferenceStep(cfg, images, labels, num_classes, device, dtype)
    loss = ref(syn, syn_labels, generator)   # graph to ``syn``; ref.logged holds the host sum
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from atom.augment import DSA
from atom.distillation import DistillConfig, RealSampler
from atom.networks import ConvNet, init_weights

__all__ = ["ReferenceStep"]


class ReferenceStep:
    """One DataDAM-style iteration: a Python loop over classes, hooks, host-side logging."""

    def __init__(self, cfg: DistillConfig, images: Tensor, labels: Tensor, num_classes: int,
                 device: torch.device, dtype: torch.dtype = torch.float32):
        self.cfg, self.k, self.device = cfg, num_classes, torch.device(device)
        self.images = images.to(self.device, dtype)
        self.sampler = RealSampler(labels.cpu(), num_classes, cfg.batch_real, self.device)
        c, h = images.shape[1], images.shape[2]
        self.net = ConvNet(c, num_classes, h, **cfg.net).to(self.device, dtype)
        for p in self.net.parameters():
            p.requires_grad = False
        self.dsa = DSA(cfg.dsa_config) if cfg.dsa else None
        self.lc = cfg.loss_config
        self._acts: list[Tensor] = []
        # the parent code attaches a hook to every activation module and reads them after forward
        for m in self.net.acts:
            m.register_forward_hook(lambda _m, _inp, out: self._acts.append(out))
        self.logged = 0.0

    def _embed(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        self._acts.clear()
        out = self.net.embed(x)
        return list(self._acts), out

    def _attention_terms(self, f_real: Tensor, f_syn: Tensor) -> list[tuple[float, Tensor, Tensor]]:
        """(weight, mean real vector, mean synthetic vector) per attention of one layer."""
        lc = self.lc

        def spatial(f):
            return F.normalize(f.abs().pow(lc.p_s).sum(1).flatten(1), p=2, dim=1)

        def channel(f):
            return F.normalize(f.abs().pow(lc.p_c).sum((2, 3)), p=2, dim=1)

        if lc.method == "datadam":
            return [(1.0, spatial(f_real).mean(0), spatial(f_syn).mean(0))]
        if lc.mixing == "sum":
            return [(1.0, spatial(f_real).mean(0), spatial(f_syn).mean(0)),
                    (lc.w_c, channel(f_real).mean(0), channel(f_syn).mean(0))]

        def concat(f):
            raw = torch.cat([f.abs().pow(lc.p_s).sum(1).flatten(1), f.abs().pow(lc.p_c).sum((2, 3))], 1)
            return F.normalize(raw, p=2, dim=1)

        return [(1.0, concat(f_real).mean(0), concat(f_syn).mean(0))]

    def __call__(self, syn: Tensor, syn_labels: Tensor, g: torch.Generator) -> Tensor:
        cfg, lc = self.cfg, self.lc
        init_weights(self.net, g)
        # same RNG order as DistillStep: the real batch (the parent shuffles each class's
        # indices; here one shared sampler draws every class's batch), then one draw with a
        # slot per class
        idx, lab = self.sampler.sample(g)
        real_idx = [idx[(lab == c).to(idx.device)] for c in range(self.k)]
        draw = self.dsa.sample(self.k, g) if self.dsa else None
        loss = torch.zeros((), device=self.device, dtype=syn.dtype)
        self.logged = 0.0
        for c in range(self.k):
            img_real = self.images[real_idx[c].to(self.device)]
            img_syn = syn[(syn_labels == c).nonzero().squeeze(1).to(self.device)]
            if draw is not None:
                d = draw.select(slice(c, c + 1))
                img_real = self.dsa.apply(img_real, d, torch.zeros(img_real.shape[0], dtype=torch.long))
                img_syn = self.dsa.apply(img_syn, d, torch.zeros(img_syn.shape[0], dtype=torch.long))
            acts_real, out_real = self._embed(img_real)
            acts_real, out_real = [a.detach() for a in acts_real], out_real.detach()
            acts_syn, out_syn = self._embed(img_syn)
            if lc.method != "dm":
                for layer in range(len(acts_real) - 1):
                    for w, r, s in self._attention_terms(acts_real[layer], acts_syn[layer]):
                        if w:
                            tl = lc.scale * w * ((r - s) ** 2).sum()
                            loss = loss + tl
                            self.logged += tl.item()  # host read-back per term, as the parent logs
            if lc.lam:
                tl = lc.scale * lc.lam * ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
                loss = loss + tl
                self.logged += tl.item()
        return loss
