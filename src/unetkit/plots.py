"""Colour masks, overlays, side-by-side pictures and training curves."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .fsio import atomic_write_bytes
from .preprocess import to_channels


def colorize(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ids outside the palette are shown black."""
    table = np.zeros((256 if mask.max(initial=0) < 256 else int(mask.max()) + 1, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[mask.astype(np.int64)]


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over an (H, W, C) uint8 image."""
    rgb = to_channels(image, 3).astype(np.float32)
    colours = colorize(mask, palette).astype(np.float32)
    return np.clip(rgb * (1 - alpha) + colours * alpha, 0, 255).astype(np.uint8)


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _save(fig, path: str | Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: list[dict], path: str | Path) -> None:
    """Loss, accuracy and mIoU per epoch, train and validation, as one PNG."""
    fig = _figure(13, 3.6)
    epochs = [r["epoch"] for r in history]
    for i, (key, title) in enumerate([("loss", "loss"), ("accuracy", "pixel accuracy"), ("miou", "mean IoU")]):
        ax = fig.add_subplot(1, 3, i + 1)
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{key}") for r in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, [float("nan") if y is None else y for y in ys], style, ms=3, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def side_by_side(
    rows: list[tuple[np.ndarray, ...]], titles: list[str], palette: list[list[int]], path: str | Path
) -> None:
    """A grid like the tutorial's display(): each row is (input, mask, mask, ...); masks are coloured."""
    n, k = len(rows), len(titles)
    fig = _figure(3.2 * k, 2.6 * n + 0.4)
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            ax = fig.add_subplot(n, k, r * k + c + 1)
            if item.ndim == 2 and c > 0:
                ax.imshow(colorize(item, palette), interpolation="nearest")
            else:
                ax.imshow(
                    item.squeeze(),
                    cmap="gray" if item.ndim == 2 or item.shape[-1] == 1 else None,
                    interpolation="nearest",
                )
            if r == 0:
                ax.set_title(titles[c])
            ax.axis("off")
    _save(fig, path)
