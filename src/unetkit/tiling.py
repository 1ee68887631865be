"""Full-resolution prediction by sliding window: a model trained on crops segments whole frames.

Windows of the training size overlap; their logits are blended with a weight that falls off
towards the window's border (where a network sees least context), then cropped to the image.
Images smaller than a window, or of sizes not divisible by 16, are padded, never rejected.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _starts(size: int, window: int, stride: int) -> list[int]:
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def blend_weight(h: int, w: int) -> torch.Tensor:
    """A separable tent from 1 at the centre to a small floor at the edges."""

    def ramp(n: int) -> torch.Tensor:
        pos = (torch.arange(n, dtype=torch.float32) + 0.5) / n
        return (1.0 - (2.0 * pos - 1.0).abs()).clamp_min(0.05)

    return ramp(h)[:, None] * ramp(w)[None, :]


def sliding_window_logits(
    forward: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    window: tuple[int, int],
    overlap: float = 0.25,
    multiple: int = 16,
    batch_size: int = 8,
) -> torch.Tensor:
    """Blend ``forward`` over windows of a (1, C, H, W) uint8 image; returns (K, H, W) logits."""
    _, _, height, width = image.shape
    wh, ww = window
    ph = max(wh, -(-height // multiple) * multiple)
    pw = max(ww, -(-width // multiple) * multiple)
    if (ph, pw) != (height, width):
        mode = "reflect" if ph - height < height and pw - width < width else "replicate"
        image = F.pad(image.float(), (0, pw - width, 0, ph - height), mode=mode).to(image.dtype)
    stride_h = max(1, int(wh * (1 - overlap)))
    stride_w = max(1, int(ww * (1 - overlap)))
    boxes = [(y, x) for y in _starts(ph, wh, stride_h) for x in _starts(pw, ww, stride_w)]
    weight = blend_weight(wh, ww)
    total = None
    norm = torch.zeros(ph, pw)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        crops = torch.cat([image[:, :, y : y + wh, x : x + ww] for y, x in chunk])
        logits = forward(crops).float().cpu()
        if total is None:
            total = torch.zeros(logits.shape[1], ph, pw)
        for (y, x), lg in zip(chunk, logits):
            total[:, y : y + wh, x : x + ww] += lg * weight
            norm[y : y + wh, x : x + ww] += weight
    assert total is not None
    return (total / norm)[:, :height, :width]
