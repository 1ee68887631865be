"""Test-time augmentation: the model's logits averaged over flipped and rescaled views of its input.

A view is (scale, flip). The input batch, uint8 at the model's input size (h, w), is resized to
``scale`` x (h, w) rounded to the network's size multiple (the image resize of the run's
preprocessing), flipped left-right when asked, passed through the model, and its logits are mapped
back (flipped again, resized bilinearly to (h, w)). The result is the mean of the views' **logits**
(not of their probabilities); probabilities, where wanted, are the softmax of that mean.

Cost: one forward pass per view, each about ``scale**2`` times the plain pass, so
``flip,scales=0.75,1,1.25`` costs 2 x (0.5625 + 1 + 1.5625) = 6.25 plain passes. The hook in
``PredictorBase`` wraps the backend's forward pass, so TTA applies the same way to resized,
sliding-window and array prediction, in ``evaluate``, ``predict`` and ``serve``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError
from .preprocess import resize_images

__all__ = ["TTA", "parse_tta", "tta_forward", "view_size"]


@dataclass(frozen=True)
class TTA:
    """Which views to average: the plain one at each of ``scales``, and its mirror image when ``flip``."""

    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.scales or any(not (math.isfinite(s) and 0.1 <= s <= 4.0) for s in self.scales):
            raise ConfigError(f"--tta scales must be numbers between 0.1 and 4, got {list(self.scales)}")

    @property
    def views(self) -> list[tuple[float, bool]]:
        return [(s, f) for s in self.scales for f in ((False, True) if self.flip else (False,))]

    @property
    def cost(self) -> float:
        """Forward cost relative to one plain pass (pixels processed)."""
        return sum(s * s for s, _ in self.views)

    def describe(self) -> str:
        parts = (["flip"] if self.flip else []) + (
            ["scales=" + ",".join(f"{s:g}" for s in self.scales)] if self.scales != (1.0,) else []
        )
        return ",".join(parts) or "none"


def parse_tta(spec: str | TTA | None) -> TTA | None:
    """``"flip"``, ``"scales=0.75,1,1.25"``, ``"flip,scales=0.75,1,1.25"``; ``None``/``"none"`` -> no TTA.

    Numbers after ``scales=`` run up to the next word, so the whole spec is one comma-separated list.
    """
    if spec is None or isinstance(spec, TTA):
        return spec
    tokens = [t.strip().lower() for t in spec.split(",") if t.strip()]
    if not tokens or tokens == ["none"]:
        return None
    flip, scales, in_scales = False, [], False
    for token in tokens:
        if token in ("flip", "hflip"):
            flip, in_scales = True, False
        elif token.startswith("scales="):
            in_scales = True
            scales.append(_number(token[len("scales=") :], spec))
        elif in_scales:
            scales.append(_number(token, spec))
        else:
            raise ConfigError(
                f"--tta {spec!r}: unknown part {token!r}; use flip and/or scales=S1,S2,... "
                "(e.g. --tta flip,scales=0.75,1,1.25)"
            )
    if not flip and scales in ([], [1.0]):
        return None
    return TTA(flip=flip, scales=tuple(scales) if scales else (1.0,))


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--tta {spec!r}: {text!r} is not a scale; give numbers, e.g. scales=0.75,1,1.25") from None


def view_size(height: int, width: int, scale: float, multiple: int) -> tuple[int, int]:
    """(h, w) scaled and rounded to the nearest multiple of ``multiple`` (at least one multiple)."""
    return (
        max(multiple, round(height * scale / multiple) * multiple),
        max(multiple, round(width * scale / multiple) * multiple),
    )


def tta_forward(
    forward: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tta: TTA,
    *,
    multiple: int,
    resize: str = "bilinear",
) -> torch.Tensor:
    """Mean logits (N, K, h, w) of ``forward`` over the views of uint8 images ``x`` (N, C, h, w)."""
    height, width = x.shape[-2:]
    total: torch.Tensor | None = None
    for scale, flip in tta.views:
        size = (height, width) if scale == 1.0 else view_size(height, width, scale, multiple)
        view = resize_images(x, size, resize)
        logits = forward(view.flip(-1) if flip else view).float()
        if flip:
            logits = logits.flip(-1)
        if tuple(logits.shape[-2:]) != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        total = logits if total is None else total + logits  # not in place: outputs may be inference tensors
    assert total is not None
    return total / len(tta.views)
