"""Per-pixel class probabilities and the pictures made from them: confidence and entropy maps.

Probabilities are the softmax of the (TTA-averaged, see ``unetkit.tta``) logits at the image's
original size. ``confidence`` is the largest probability of each pixel; ``entropy`` is the Shannon
entropy of its distribution divided by ``log K``, so 0 means certain and 1 means every class is as
likely as any other. Both are drawn as 8-bit grey PNGs (confidence: white = sure; entropy: white =
unsure), and the probabilities themselves can be kept as float16 ``.npz`` (key ``probabilities``,
shape (K, H, W), with ``class_names``), loadable with ``np.load(path)`` and no pickle.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError

__all__ = ["PROB_FORMATS", "check_format", "confidence", "entropy", "to_gray8", "save_probabilities"]

PROB_FORMATS = ("npz", "png")


def confidence(probs: torch.Tensor) -> torch.Tensor:
    """(H, W) largest class probability of (K, H, W) probabilities."""
    return probs.max(dim=0).values


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """(H, W) entropy of (K, H, W) probabilities, normalised by log K to [0, 1] (0 for K = 1)."""
    k = probs.shape[0]
    if k < 2:
        return torch.zeros(probs.shape[1:], dtype=torch.float32)
    p = probs.float()
    h = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=0)
    return (h / math.log(k)).clamp_(0.0, 1.0)


def to_gray8(values: torch.Tensor) -> np.ndarray:
    """Values in [0, 1] -> (H, W) uint8 grey levels 0-255."""
    return (values.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def check_format(kind: str) -> None:
    if kind not in PROB_FORMATS:
        raise ConfigError(f"--save-probs must be one of {', '.join(PROB_FORMATS)}, got {kind!r}")


def save_probabilities(
    out: Path, stem: str, probs: torch.Tensor, class_names: list[str], kind: str = "npz"
) -> list[Path]:
    """Write ``stem``'s confidence and entropy PNGs, and with ``kind="npz"`` the float16 probabilities."""
    from .fsio import atomic_write_bytes
    from .plots import save_png

    check_format(kind)
    written = [out / f"{stem}_confidence.png", out / f"{stem}_entropy.png"]
    save_png(written[0], to_gray8(confidence(probs)))
    save_png(written[1], to_gray8(entropy(probs)))
    if kind == "npz":
        buf = io.BytesIO()
        np.savez_compressed(
            buf, probabilities=probs.cpu().numpy().astype(np.float16), class_names=np.array(class_names, dtype=str)
        )
        written.append(out / f"{stem}_probs.npz")
        atomic_write_bytes(written[-1], buf.getvalue())
    return written
