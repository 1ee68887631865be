"""The seed's U-Net, layer for layer, and the FCN baseline it is compared against.

Layout is PyTorch's (N, C, H, W); sizes and arguments follow the Keras seed: ``input_size`` is
(height, width, channels). The model knows nothing of files, losses or devices.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, ParamSpec, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from .config import valid_sizes_near

# Keras draws He-normal from a normal truncated at two standard deviations and rescales the
# standard deviation by this factor so that the truncated distribution keeps variance 2 / fan_in.
_TRUNCATION_CORRECTION = 0.87962566103423978


def he_normal_(weight: torch.Tensor, fan_in: int) -> None:
    """Keras ``HeNormal``: truncated normal with stddev sqrt(2 / fan_in)."""
    std = math.sqrt(2.0 / fan_in) / _TRUNCATION_CORRECTION
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


def glorot_uniform_(weight: torch.Tensor) -> None:
    """Keras's default kernel initialiser (fan_in + fan_out is symmetric, so layout does not matter)."""
    nn.init.xavier_uniform_(weight)


def check_size(height: int, width: int, multiple: int) -> None:
    """Raise a ValueError naming the nearest valid sizes when H or W is not a multiple of ``multiple``."""
    bad = [(name, v) for name, v in (("height", height), ("width", width)) if v <= 0 or v % multiple]
    if bad:
        hints = ", ".join(
            f"{name} {v} -> {' or '.join(map(str, sorted(set(valid_sizes_near(v, multiple)))))}" for name, v in bad
        )
        raise ValueError(
            f"input size {height}x{width} is not divisible by {multiple} (the U-Net halves it "
            f"{int(math.log2(multiple))} times); nearest valid sizes: {hints}"
        )


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class ConvTranspose2dSame(nn.ConvTranspose2d):
    """Keras ``Conv2DTranspose(k=3, strides=2, padding='same')``: output exactly 2H x 2W.

    TensorFlow places output pixel 2i + k for input pixel i and kernel tap k (no padding in front,
    the extra pixel at the end dropped), which is PyTorch's padding=0 followed by a crop.
    """

    #: How the layer runs (the math is the same either way): ``True`` as four sub-pixel phases (one 2x2
    #: convolution with 4 x out_channels outputs, then pixel_shuffle), ``False`` as PyTorch's transposed
    #: convolution then the crop, ``None`` (default) sub-pixel under bf16 autocast on the CPU, native
    #: otherwise: oneDNN's bf16 transposed convolution is several times slower than the sub-pixel one,
    #: while in fp32 the native one trains 1.2-1.3x faster (benchmarks/README.md).
    subpixel: bool | None = None
    subpixel_select: torch.Tensor  # a buffer (registered in __init__)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        # the tap selection travels with the module to its device (no copy per call); not part of the weights
        self.register_buffer("subpixel_select", subpixel_selection(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h, w = x.shape[-2:]
        s = self.stride[0]
        if self._use_subpixel(x):
            return subpixel_conv_transpose(x, self.weight, self.bias, self.subpixel_select)
        return super().forward(x)[..., : h * s, : w * s]

    def _use_subpixel(self, x: torch.Tensor) -> bool:
        if self.kernel_size != (3, 3) or self.stride != (2, 2) or self.groups != 1 or self.dilation != (1, 1):
            return False
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return False  # exported graphs keep the plain ConvTranspose node
        if self.subpixel is not None:
            return self.subpixel
        return x.device.type == "cpu" and torch.is_autocast_enabled("cpu")


def _subpixel_taps() -> torch.Tensor:
    """(4 phases, 4 window positions) -> index of the 3x3 tap in the flattened kernel, 9 for none.

    Output pixel (2m + a, 2n + b) (phase a * 2 + b) sums input pixel (m - 1 + dy, n - 1 + dx) times
    tap (a + 2 - 2 dy, b + 2 - 2 dx), wherever that tap lies inside the 3x3 kernel.
    """
    taps = torch.full((4, 4), 9, dtype=torch.long)
    for a in range(2):
        for b in range(2):
            for dy in range(2):
                for dx in range(2):
                    ky, kx = a + 2 - 2 * dy, b + 2 - 2 * dx
                    if ky <= 2 and kx <= 2:
                        taps[a * 2 + b, dy * 2 + dx] = ky * 3 + kx
    return taps


def subpixel_selection() -> torch.Tensor:
    """(16, 9) zeros and ones: row ``phase * 4 + window position`` picks that position's 3x3 tap (a row of
    zeros where there is none), so that one matrix product gathers the sub-pixel kernel."""
    return F.one_hot(_subpixel_taps().reshape(-1), 10)[:, :9].float()


_SELECT = subpixel_selection()


def subpixel_conv_transpose(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, select: torch.Tensor | None = None
) -> torch.Tensor:
    """``conv_transpose2d(x, weight, bias, stride=2)`` (3x3 kernel) cropped to 2H x 2W, as sub-pixel phases.

    The same products and sums as the transposed convolution (a different summation order only): the
    four output phases are one 2x2 convolution over the input padded by one pixel at the top and left,
    its outputs phase-major (phase * C_out + channel) so that interleaving them into the 2H x 2W image
    is one copy of contiguous channel vectors in the channels-last layout. The 2x2 kernel is gathered by
    a product with ``subpixel_selection()`` into the channels-last layout the convolution reads: 3x
    faster forward and backward than an indexed gather and a transposing copy (benchmarks/README.md).
    """
    cin, cout = weight.shape[:2]
    select = _SELECT.to(weight.device) if select is None else select
    taps = weight.permute(1, 2, 3, 0).reshape(cout, 9, cin)  # (out, tap, in)
    kernel = torch.matmul(select.to(taps.dtype), taps)  # (out, phase * 4 + position, in)
    kernel = kernel.reshape(cout, 4, 2, 2, cin).transpose(0, 1).reshape(4 * cout, 2, 2, cin).permute(0, 3, 1, 2)
    y = F.conv2d(F.pad(x, (1, 0, 1, 0)), kernel, bias.repeat(4) if bias is not None else None)
    n, _, h, w = y.shape
    if y.is_contiguous(memory_format=torch.channels_last):  # (N, h, w, a, b, C) -> (N, h, a, w, b, C)
        out = y.permute(0, 2, 3, 1).reshape(n, h, w, 2, 2, cout).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(n, 2 * h, 2 * w, cout).permute(0, 3, 1, 2)
    out = y.reshape(n, 2, 2, cout, h, w).permute(0, 3, 4, 1, 5, 2)  # (N, C, h, a, w, b)
    return out.reshape(n, cout, 2 * h, 2 * w)


class Concatenate(nn.Module):
    """Keras ``concatenate(axis=3)`` on channels-last is channel concatenation (dim 1) here."""

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([up, skip], dim=1)


class ConvBlock(nn.Module):
    """Two 3x3 convs + ReLU, optional dropout and 2x2 max pooling. Returns (next_layer, skip)."""

    def __init__(
        self,
        in_channels: int,
        n_filters: int = 32,
        dropout_prob: float = 0.0,
        max_pooling: bool = True,
        batch_norm: bool = False,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, n_filters, 3, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(n_filters) if batch_norm else None
        self.conv2 = nn.Conv2d(n_filters, n_filters, 3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(n_filters) if batch_norm else None
        self.dropout = nn.Dropout(dropout_prob) if dropout_prob > 0 else None
        self.pool = nn.MaxPool2d(2) if max_pooling else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv = _conv_bn_relu(x, self.conv1, self.bn1)
        conv = _conv_bn_relu(conv, self.conv2, self.bn2)
        if self.dropout is not None:
            conv = self.dropout(conv)
        next_layer = self.pool(conv) if self.pool is not None else conv
        return next_layer, conv


class UpsamplingBlock(nn.Module):
    """3x3 stride-2 transposed conv, concatenation with the skip, two 3x3 convs + ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, n_filters: int = 32, batch_norm: bool = False):
        super().__init__()
        self.up = ConvTranspose2dSame(in_channels, n_filters, 3, stride=2)
        self.concat = Concatenate()
        self.conv1 = nn.Conv2d(n_filters + skip_channels, n_filters, 3, padding=1, bias=not batch_norm)
        self.bn1 = nn.BatchNorm2d(n_filters) if batch_norm else None
        self.conv2 = nn.Conv2d(n_filters, n_filters, 3, padding=1, bias=not batch_norm)
        self.bn2 = nn.BatchNorm2d(n_filters) if batch_norm else None

    def forward(self, expansive_input: torch.Tensor, contractive_input: torch.Tensor) -> torch.Tensor:
        merge = self.concat(self.up(expansive_input), contractive_input)
        conv = _conv_bn_relu(merge, self.conv1, self.bn1)
        return _conv_bn_relu(conv, self.conv2, self.bn2)


def _conv_bn_relu(x: torch.Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> torch.Tensor:
    x = conv(x)
    if bn is not None:
        x = bn(x)
    return F.relu(x)


def conv_block(
    in_channels: int, n_filters: int = 32, dropout_prob: float = 0.0, max_pooling: bool = True, batch_norm: bool = False
) -> ConvBlock:
    """The seed's encoder block (PyTorch needs ``in_channels`` up front where Keras infers it)."""
    return ConvBlock(in_channels, n_filters, dropout_prob, max_pooling, batch_norm)


def upsampling_block(
    in_channels: int, skip_channels: int, n_filters: int = 32, batch_norm: bool = False
) -> UpsamplingBlock:
    """The seed's decoder block."""
    return UpsamplingBlock(in_channels, skip_channels, n_filters, batch_norm)


@dataclass(frozen=True)
class _Arch:
    """The arguments ``unet_model`` and ``fcn_model`` share; the defaults are the seed's exactly."""

    input_size: tuple[int, int, int] = (96, 128, 3)
    n_filters: int = 32
    n_classes: int = 23
    _: KW_ONLY
    depth: int = 5
    dropout: float = 0.3
    batch_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(self.input_size))  # a list from JSON or the CLI


_Block = TypeVar("_Block", bound=nn.Module)


def _typed(modules: nn.ModuleList, kind: type[_Block]) -> list[_Block]:
    """The modules of ``modules``, all of type ``kind`` (a TypeError otherwise), typed for their layers."""
    blocks = [m for m in modules if isinstance(m, kind)]
    if len(blocks) != len(modules):
        raise TypeError(f"expected only {kind.__name__} modules in {type(modules).__name__}")
    return blocks


class _Segmenter(nn.Module):
    """Shared pieces of U-Net and FCN: the encoder, size checks and Keras initialisation."""

    def __init__(self, arch: _Arch):
        super().__init__()
        h, w, c = arch.input_size
        if arch.depth < 2:
            raise ValueError(f"depth must be at least 2, got {arch.depth}")
        if arch.n_filters < 1 or arch.n_classes < 1 or c < 1:
            raise ValueError("n_filters, n_classes and the channel count must be positive")
        if not 0.0 <= arch.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {arch.dropout}")
        self.arch = arch
        self.size_multiple = 2 ** (arch.depth - 1)
        check_size(h, w, self.size_multiple)
        self.filters = [arch.n_filters * 2**level for level in range(arch.depth)]
        blocks, in_ch = [], c
        for level, f in enumerate(self.filters):
            deep = level >= arch.depth - 2  # the seed drops out in its last two blocks
            blocks.append(
                conv_block(
                    in_ch,
                    f,
                    arch.dropout if deep else 0.0,
                    max_pooling=level < arch.depth - 1,
                    batch_norm=arch.batch_norm,
                )
            )
            in_ch = f
        self.encoder = nn.ModuleList(blocks)

    @property
    def encoder_blocks(self) -> list[ConvBlock]:
        return _typed(self.encoder, ConvBlock)

    @property
    def in_channels(self) -> int:
        return self.arch.input_size[2]

    @property
    def n_classes(self) -> int:
        return self.arch.n_classes

    def check_input(self, x: torch.Tensor) -> None:
        if _tracing():
            return
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        check_size(x.shape[2], x.shape[3], self.size_multiple)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.encoder:
            x, skip = block(x)
            skips.append(skip)
        return x, skips

    def _init_keras(self, he_layers: list[nn.Conv2d]) -> None:
        he = {id(m) for m in he_layers}
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                if id(m) in he:
                    he_normal_(m.weight, m.in_channels * m.kernel_size[0] * m.kernel_size[1])
                else:
                    glorot_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)


class UNet(_Segmenter):
    """The seed's ``unet_model``: (N, C, H, W) floats in [0, 1] -> (N, n_classes, H, W) logits."""

    def __init__(self, arch: _Arch):
        super().__init__(arch)
        f = self.filters
        self.decoder = nn.ModuleList(
            upsampling_block(f[level + 1], f[level], f[level], arch.batch_norm)
            for level in reversed(range(arch.depth - 1))
        )
        self.conv9 = nn.Conv2d(f[0], f[0], 3, padding=1)
        self.conv10 = nn.Conv2d(f[0], arch.n_classes, 1)
        he = [m for b in self.encoder_blocks for m in (b.conv1, b.conv2)]
        he += [m for b in self.decoder_blocks for m in (b.conv1, b.conv2)] + [self.conv9]
        self._init_keras(he)

    @property
    def decoder_blocks(self) -> list[UpsamplingBlock]:
        return _typed(self.decoder, UpsamplingBlock)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, skips = self.encode(x)
        for block, skip in zip(self.decoder, reversed(skips[:-1])):
            x = block(x, skip)
        return self.conv10(F.relu(self.conv9(x)))


class FCN(_Segmenter):
    """FCN-32s-style baseline: the seed's encoder, a 1x1 classifier and one transposed conv back to H x W."""

    def __init__(self, arch: _Arch):
        super().__init__(arch)
        s = self.size_multiple
        self.classifier = nn.Conv2d(self.filters[-1], arch.n_classes, 1)
        self.upsample = nn.ConvTranspose2d(arch.n_classes, arch.n_classes, 2 * s, stride=s, padding=s // 2)
        self._init_keras([m for b in self.encoder_blocks for m in (b.conv1, b.conv2)])
        with torch.no_grad():  # start the single upsampling as bilinear interpolation, as FCN does
            self.upsample.weight.copy_(_bilinear_kernel(arch.n_classes, 2 * s))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x, _ = self.encode(x)
        return self.upsample(self.classifier(x))


def _bilinear_kernel(channels: int, size: int) -> torch.Tensor:
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float32)
    filt = 1 - (og - center).abs() / factor
    kernel = filt[:, None] * filt[None, :]
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = kernel
    return weight


_P = ParamSpec("_P")
_Net = TypeVar("_Net", bound=_Segmenter)


def _builder(network: Callable[[_Arch], _Net], arch: Callable[_P, _Arch], name: str, doc: str) -> Callable[_P, _Net]:
    """A public builder taking ``_Arch``'s arguments, so that every network's are the same, defined once."""

    def build(*args: _P.args, **kwargs: _P.kwargs) -> _Net:
        return network(arch(*args, **kwargs))

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    cast(Any, build).__signature__ = inspect.signature(arch).replace(return_annotation=network.__name__)  # help()
    return build


unet_model = _builder(
    UNet,
    _Arch,
    "unet_model",
    """The seed's U-Net. The defaults are the seed's exactly (8,640,471 parameters).

    ``depth`` (levels, 5 in the seed), ``dropout`` (0.3 in the last two encoder blocks) and
    ``batch_norm`` (off in the seed) are options beyond the seed.
    """,
)
fcn_model = _builder(
    FCN,
    _Arch,
    "fcn_model",
    "The FCN baseline the seed contrasts U-Net with: same encoder, one final upsampling.",
)


MODELS = {"unet": unet_model, "fcn": fcn_model}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class LayerInfo:
    name: str
    kind: str
    output_shape: tuple[int, ...]  # (H, W, C), as Keras prints it without the batch axis
    params: int


# PyTorch module type -> (Keras layer name, Keras class name)
_KERAS_NAMES = {
    nn.Conv2d: ("conv2d", "Conv2D"),
    ConvTranspose2dSame: ("conv2d_transpose", "Conv2DTranspose"),
    nn.ConvTranspose2d: ("conv2d_transpose", "Conv2DTranspose"),
    nn.MaxPool2d: ("max_pooling2d", "MaxPooling2D"),
    nn.Dropout: ("dropout", "Dropout"),
    nn.BatchNorm2d: ("batch_normalization", "BatchNormalization"),
    Concatenate: ("concatenate", "Concatenate"),
}


def layer_summary(model: _Segmenter, height: int | None = None, width: int | None = None) -> list[LayerInfo]:
    """Per-layer output shapes and parameter counts in Keras's order and naming."""
    h, w, c = model.arch.input_size
    h, w = height or h, width or w
    rows: list[LayerInfo] = [LayerInfo("input_layer", "InputLayer", (h, w, c), 0)]
    counters: dict[str, int] = {}
    hooks = []

    def hook(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        base, kind = _KERAS_NAMES[type(module)]
        n = counters.get(base, 0)
        counters[base] = n + 1
        shape = tuple(output.shape[2:]) + (output.shape[1],)
        rows.append(
            LayerInfo(
                base if n == 0 else f"{base}_{n}", kind, shape, sum(p.numel() for p in module.parameters(recurse=False))
            )
        )

    for m in model.modules():
        if type(m) in _KERAS_NAMES:
            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, c, h, w, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for handle in hooks:
            handle.remove()
    return rows


def format_summary(model: _Segmenter) -> str:
    """A Keras-style ``model.summary()`` table."""
    rows = layer_summary(model)
    lines = [f"{'Layer (type)':<42}{'Output Shape':<26}{'Param #':>12}", "=" * 80]
    for r in rows:
        shape = "(None, " + ", ".join(map(str, r.output_shape)) + ")"
        lines.append(f"{r.name + ' (' + r.kind + ')':<42}{shape:<26}{r.params:>12,}")
    lines += [
        "=" * 80,
        f"Total params: {count_parameters(model):,}",
        f"Trainable params: {sum(p.numel() for p in model.parameters() if p.requires_grad):,}",
    ]
    return "\n".join(lines)
