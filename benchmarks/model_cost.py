"""FLOPs and bytes per image of the seed's U-Net, counted from the model itself (forward hooks).

FLOPs count a multiply-add as 2. The transposed convolutions are counted as the math the network
defines (C_in x C_out x 9 multiply-adds per input pixel), whatever kernel runs them.

Bytes are the traffic through memory at a given activation width (2 for bf16, 4 for fp32), two ways:

- ``eager``: every layer reads its inputs once and writes its output once, as unfused eager PyTorch
  does (convolution, ReLU, pooling, transposed convolution, concatenation each a separate pass);
- ``fused``: the floor with the usual fusions (ReLU and bias inside the convolution, the concatenation
  written in place), so each convolution reads its input and writes its output once.

Training is counted as 3x the forward FLOPs (forward, gradient of the input, gradient of the weights)
and about 3x the forward bytes (the backward pass reads each saved activation and its gradient and
writes the gradient of the input). Weights (8.6 M parameters) are read once per step, so per image
they shrink with the batch.

Usage: python benchmarks/model_cost.py [--size 96 128] [--classes 23]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from unetkit.model import Concatenate, ConvTranspose2dSame, count_parameters, unet_model


@dataclass
class Cost:
    """Per-image cost of one forward pass (training: see ``train_*``)."""

    height: int
    width: int
    params: int
    forward_gflop: float
    conv_gflop: float
    transposed_gflop: float
    eager_mb_bf16: float  # forward activation traffic, unfused
    fused_mb_bf16: float  # forward activation traffic, ReLU/concat fused
    train_gflop: float
    train_eager_mb_bf16: float
    train_fused_mb_bf16: float

    def time_floor_s(self, tflops: float, tbytes_s: float, train: bool, fused: bool = True) -> dict[str, float]:
        """Seconds per image set by arithmetic and by memory traffic at the given rates."""
        gflop = self.train_gflop if train else self.forward_gflop
        mb = (
            (self.train_fused_mb_bf16 if fused else self.train_eager_mb_bf16)
            if train
            else (self.fused_mb_bf16 if fused else self.eager_mb_bf16)
        )
        return {"compute_s": gflop / (tflops * 1e3), "memory_s": mb / (tbytes_s * 1e6)}


def count(height: int = 96, width: int = 128, n_classes: int = 23, n_filters: int = 32) -> Cost:
    """Count FLOPs and activation bytes of one image through the seed's U-Net."""
    model = unet_model((height, width, 3), n_filters, n_classes).eval()
    flop = {"conv": 0.0, "transposed": 0.0}
    eager_elems = 0.0  # elements read + written by unfused layers
    fused_elems = 0.0

    def numel(t: torch.Tensor) -> float:
        return float(t[0].numel())  # per image

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal eager_elems, fused_elems
        if isinstance(module, ConvTranspose2dSame):
            x = inputs[0]
            macs = x.shape[1] * module.out_channels * 9 * x.shape[2] * x.shape[3]
            flop["transposed"] += 2.0 * macs
            eager_elems += numel(x) + numel(output)
            fused_elems += numel(x) + numel(output)
        elif isinstance(module, nn.Conv2d):
            x = inputs[0]
            k = module.kernel_size[0] * module.kernel_size[1]
            macs = x.shape[1] * module.out_channels * k * output.shape[2] * output.shape[3]
            flop["conv"] += 2.0 * macs
            eager_elems += numel(x) + numel(output)
            fused_elems += numel(x) + numel(output)
            if module.kernel_size[0] == 3:  # every 3x3 conv is followed by a ReLU: one more read + write unfused
                eager_elems += 2 * numel(output)
        elif isinstance(module, nn.MaxPool2d):
            eager_elems += numel(inputs[0]) + numel(output)
            fused_elems += numel(inputs[0]) + numel(output)
        elif isinstance(module, Concatenate):
            eager_elems += sum(numel(t) for t in inputs) + numel(output)

    hooks = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, Concatenate)) or isinstance(m, ConvTranspose2dSame)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    for h in hooks:
        h.remove()
    fwd = flop["conv"] + flop["transposed"]
    return Cost(
        height,
        width,
        count_parameters(model),
        fwd / 1e9,
        flop["conv"] / 1e9,
        flop["transposed"] / 1e9,
        eager_elems * 2 / 1e6,
        fused_elems * 2 / 1e6,
        3 * fwd / 1e9,
        3 * eager_elems * 2 / 1e6,
        3 * fused_elems * 2 / 1e6,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"))
    ap.add_argument("--classes", type=int, default=23)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [tuple(args.size)] if args.size else [(96, 128), (384, 480)]
    costs = [count(h, w, args.classes) for h, w in sizes]
    if args.json:
        print(json.dumps([asdict(c) for c in costs], indent=1))
        return
    print(
        "| size | forward GFLOP/img | of which transposed | training GFLOP/img | forward MB/img bf16 "
        "(eager / fused) | training MB/img bf16 (eager / fused) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for c in costs:
        print(
            f"| {c.height}x{c.width} | {c.forward_gflop:.2f} | {c.transposed_gflop:.2f} | {c.train_gflop:.1f} | "
            f"{c.eager_mb_bf16:.1f} / {c.fused_mb_bf16:.1f} | {c.train_eager_mb_bf16:.1f} / "
            f"{c.train_fused_mb_bf16:.1f} |"
        )


if __name__ == "__main__":
    main()
