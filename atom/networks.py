"""The ConvNet family used for distillation, evaluation and the NAS proxy.

``ConvNet`` is the standard dataset-distillation encoder: ``depth`` blocks of
conv3x3 -> normalisation -> activation -> pooling, then a linear classifier on the flattened
output of the last block. Distillation needs the post-activation map of every block and the
final embedding; :meth:`ConvNet.features` returns them directly (no forward hooks), so the
whole encoder is one traceable function (``torch.compile`` and ``torch.func`` friendly).

Initialisation follows PyTorch's defaults (uniform Kaiming for conv/linear weights, uniform
``1/sqrt(fan_in)`` biases, ones/zeros for norm affines), but draws from an explicit
``torch.Generator`` via :func:`init_weights`, so a distillation iteration's random network is
reproducible without touching the global RNG.
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn

__all__ = ["ConvNet", "AlexNet", "VGG11", "ResNet18", "ARCHITECTURES", "init_weights", "build_network",
           "single_pixel_norms", "ACTIVATIONS", "NORMS", "POOLS"]

ACTIVATIONS = ("relu", "sigmoid", "leakyrelu")
NORMS = ("none", "batchnorm", "layernorm", "instancenorm", "groupnorm")
POOLS = ("none", "max", "avg")
_POOL_ALIASES = {"maxpool": "max", "avgpool": "avg", "maxpooling": "max", "avgpooling": "avg"}


def _norm(kind: str, channels: int, size: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":  # over (C, H, W) per image, as in the parent DC/DM code
        return nn.LayerNorm([channels, size, size])
    if kind == "instancenorm":  # GroupNorm with one group per channel, affine (spec section 2)
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(4 if channels % 4 == 0 else 1, channels, affine=True)
    raise AssertionError(kind)


_POOL_MATRICES: dict = {}


def avg_pool_2x2(x: Tensor) -> Tensor:
    """``F.avg_pool2d(x, 2)`` for even H and W as one GEMM: each row pair (2W values) times a
    (2W, W/2) matrix of 0.25s. On the CPU this is ~3x faster than PyTorch's NCHW pooling
    kernel (2.9 vs 8.5 ms for 32x128x32x32, one thread) and gives the same values."""
    n, c, h, w = x.shape
    key = (w, x.device, x.dtype)
    m = _POOL_MATRICES.get(key)
    if m is None:
        with torch.inference_mode(False):  # a normal tensor: autograd may save it for backward
            j = torch.arange(2 * w)
            m = torch.zeros(2 * w, w // 2, dtype=x.dtype)
            m[j, (j % w) // 2] = 0.25
            m = _POOL_MATRICES[key] = m.to(x.device)
    return (x.reshape(n * c * h // 2, 2 * w) @ m).view(n, c, h // 2, w // 2)


@contextlib.contextmanager
def _winograd():
    """NNPACK's Winograd convolution (oneDNN off) for 3x3 convolutions without autograd."""
    mkldnn = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(mkldnn)


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm: unknown value {norm!r}; choose from {NORMS}")


def _act(kind: str) -> nn.Module:
    return {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "leakyrelu": lambda: nn.LeakyReLU(0.01)}[kind]()


class ConvNet(nn.Module):
    """ConvNet-``depth`` of ``width`` channels for ``channels`` x ``im_size`` x ``im_size`` inputs."""

    def __init__(self, channels: int, num_classes: int, im_size: int, width: int = 128, depth: int = 3,
                 act: str = "relu", norm: str = "instancenorm", pool: str = "avg"):
        super().__init__()
        pool = _POOL_ALIASES.get(pool, pool)
        for name, value, allowed in (("act", act, ACTIVATIONS), ("norm", norm, NORMS), ("pool", pool, POOLS)):
            if value not in allowed:
                raise ValueError(f"{name}: unknown value {value!r}; choose from {allowed}")
        for name, value in (("channels", channels), ("num_classes", num_classes), ("im_size", im_size),
                            ("width", width), ("depth", depth)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        if pool != "none" and im_size >> depth < 1:
            raise ValueError(f"depth: {depth} pooling blocks shrink a {im_size}x{im_size} input below 1 pixel")
        self.config = dict(channels=channels, num_classes=num_classes, im_size=im_size, width=width,
                           depth=depth, act=act, norm=norm, pool=pool)
        self.convs, self.norms, self.acts, self.pools = (nn.ModuleList() for _ in range(4))
        # on the CPU, 2x2 average pooling as a GEMM (avg_pool_2x2); set by atom.distillation
        self.cpu_kernels = False
        self.winograd = False
        # layers draw a throw-away default init from the global RNG; fork it so that building a
        # network never shifts anybody else's random stream (real weights come from init_weights)
        with torch.random.fork_rng(devices=[]):
            self._build(channels, num_classes, im_size, width, depth, act, norm, pool)

    def _build(self, channels, num_classes, im_size, width, depth, act, norm, pool):
        size, c_in = im_size, channels
        for _ in range(depth):
            self.convs.append(nn.Conv2d(c_in, width, kernel_size=3, padding=1))
            self.norms.append(_norm(norm, width, size))
            self.acts.append(_act(act))
            if pool == "none":
                self.pools.append(nn.Identity())
            else:
                self.pools.append(nn.AvgPool2d(2, 2) if pool == "avg" else nn.MaxPool2d(2, 2))
                size //= 2
            c_in = width
        self.embed_dim = width * size * size
        self.feature_sizes = [im_size >> i if pool != "none" else im_size for i in range(depth)]
        self.classifier = nn.Linear(self.embed_dim, num_classes)

    def features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Post-activation map of every block (before pooling) and the final embedding."""
        feats = []
        fast_pool = self.cpu_kernels and x.device.type == "cpu" and self.config["pool"] == "avg"
        fast_relu = self.cpu_kernels and self.config["act"] == "relu"
        winograd = self.winograd and x.device.type == "cpu" and not torch.is_grad_enabled()
        for conv, norm, act, pool in zip(self.convs, self.norms, self.acts, self.pools):
            with _winograd() if winograd and conv.in_channels >= 8 else contextlib.nullcontext():
                x = conv(x)
            x = norm(x)
            # without autograd (the real branch) the ReLU runs in place on the fresh map
            x = x.relu_() if fast_relu and not torch.is_grad_enabled() else act(x)
            feats.append(x)
            x = avg_pool_2x2(x) if fast_pool and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0 else pool(x)
        return feats, x.flatten(1)

    def embed(self, x: Tensor) -> Tensor:
        return self.features(x)[1]

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x)[1])


class AlexNet(nn.Module):
    """AlexNet for small inputs (five convs, three max-pools), as used for cross-architecture
    evaluation in the DC/DM/DataDAM line of work; ``norm`` after every conv."""

    def __init__(self, channels: int, num_classes: int, im_size: int, norm: str = "instancenorm"):
        super().__init__()
        _check_norm(norm)
        with torch.random.fork_rng(devices=[]):
            layers, size, c_in = [], im_size, channels
            for c_out, k, pool in ((128, 5, True), (192, 5, True), (256, 3, False), (192, 3, False), (192, 3, True)):
                layers += [nn.Conv2d(c_in, c_out, k, padding=k // 2), _norm(norm, c_out, size), nn.ReLU()]
                if pool and size >= 2:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
                c_in = c_out
            self.body = nn.Sequential(*layers)
            self.classifier = nn.Linear(c_in * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x).flatten(1))


class VGG11(nn.Module):
    """VGG-11 with ``norm`` after every conv; pools are skipped once the map is 1x1 so that
    small inputs (8x8 digits) work too."""

    _CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, channels: int, num_classes: int, im_size: int, norm: str = "instancenorm"):
        super().__init__()
        _check_norm(norm)
        with torch.random.fork_rng(devices=[]):
            layers, size, c_in = [], im_size, channels
            for v in self._CFG:
                if v == "M":
                    if size >= 2:
                        layers.append(nn.MaxPool2d(2))
                        size //= 2
                    continue
                layers += [nn.Conv2d(c_in, v, 3, padding=1), _norm(norm, v, size), nn.ReLU()]
                c_in = v
            self.body = nn.Sequential(*layers)
            self.classifier = nn.Linear(c_in * size * size, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x).flatten(1))


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, size: int):
        super().__init__()
        out_size = (size + stride - 1) // stride
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.n1 = _norm(norm, c_out, out_size)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.n2 = _norm(norm, c_out, out_size)
        self.short = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _norm(norm, c_out, out_size))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.n1(self.conv1(x)))
        return torch.relu(self.n2(self.conv2(out)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 (CIFAR stem: one 3x3 conv, no max-pool) with ``norm`` (instancenorm by default)."""

    def __init__(self, channels: int, num_classes: int, im_size: int, norm: str = "instancenorm"):
        super().__init__()
        _check_norm(norm)
        with torch.random.fork_rng(devices=[]):
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), _norm(norm, 64, im_size), nn.ReLU())
            blocks, c_in, size = [], 64, im_size
            for c_out, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
                blocks.append(_BasicBlock(c_in, c_out, stride, norm, size))
                size, c_in = (size + stride - 1) // stride, c_out
            self.blocks = nn.Sequential(*blocks)
            self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.blocks(self.stem(x)).mean((2, 3)))


ARCHITECTURES = {"convnet": ConvNet, "alexnet": AlexNet, "vgg11": VGG11, "resnet18": ResNet18}


@torch.no_grad()
def init_weights(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw every parameter with PyTorch's default scheme from ``generator``.

    Conv/linear weights: ``kaiming_uniform_(a=sqrt(5))``; biases ``U(-1/sqrt(fan_in), ...)``;
    norm affines: ones and zeros; batch-norm running statistics reset.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            w = m.weight
            # drawn in float32 where the generator lives (a CPU generator: identical on every
            # device; a CUDA one: no host copy), then copied into the parameter
            dev = generator.device if generator is not None else torch.device("cpu")
            tmp = torch.empty(w.shape, dtype=torch.float32, device=dev)
            nn.init.kaiming_uniform_(tmp, a=math.sqrt(5), generator=generator)
            w.copy_(tmp)
            if m.bias is not None:
                fan_in = w[0].numel()
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                m.bias.copy_(torch.empty(m.bias.shape, device=dev).uniform_(-bound, bound, generator=generator))
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d)):
            if getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
    return module


def build_network(channels: int, num_classes: int, im_size: int, *, arch: str = "convnet",
                  generator: torch.Generator | None = None, **config) -> nn.Module:
    """Build a network by name (``convnet``, ``alexnet``, ``vgg11``, ``resnet18``) and initialise
    it from ``generator``. ConvNet takes depth/width/act/norm/pool; the others take ``norm``."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: unknown architecture {arch!r}; available: {sorted(ARCHITECTURES)}")
    if arch != "convnet":
        config = {"norm": config["norm"]} if "norm" in config else {}
    net = ARCHITECTURES[arch](channels, num_classes, im_size, **config)
    return init_weights(net, generator)


@torch.no_grad()
def single_pixel_norms(channels: int, num_classes: int, im_size: int, *, arch: str = "convnet", **config) -> int:
    """How many per-channel normalisations (instance norm: one group per channel) of the network
    see a 1x1 map on ``im_size`` inputs. Such a layer normalises one value per channel to zero,
    so everything after it sees a constant: the network cannot learn and scores chance
    (VGG-11 below 32x32 inputs, ResNet-18 below 16x16, e.g. on 8x8 digits)."""
    net = build_network(channels, num_classes, im_size, arch=arch, **config)
    seen: list[int] = []

    def hook(module, args, _out):
        seen.append(int(args[0][0, 0].numel()))

    handles = [m.register_forward_hook(hook) for m in net.modules()
               if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels]
    try:
        net.eval()(torch.zeros(2, channels, im_size, im_size))
    finally:
        for h in handles:
            h.remove()
    return sum(1 for n in seen if n == 1)
