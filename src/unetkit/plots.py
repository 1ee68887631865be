"""Colour masks, overlays, side-by-side pictures and training curves."""

from __future__ import annotations

import io
import struct
import types
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .fsio import atomic_write_bytes
from .preprocess import display_rgb

_deflate_lib: types.ModuleType = zlib  # the standard library's, unless zlib-ng is installed
try:  # zlib-ng (extra "png"): the same deflate format, 1.5-2.5x faster at these settings
    from zlib_ng import zlib_ng as _deflate_lib
except ImportError:
    pass

# metrics.csv column prefix of each class's validation IoU (``val_iou_<class name>``).
PER_CLASS_IOU = "val_iou_"


def _colour_table(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    table = np.zeros((256 if mask.max(initial=0) < 256 else int(mask.max()) + 1, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table


def colorize(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ids outside the palette are shown black."""
    ids = mask if mask.dtype.kind in "ui" else mask.astype(np.int64)
    return np.take(_colour_table(mask, palette), ids, axis=0)  # 4x faster than table[ids], same values


@lru_cache(maxsize=16, typed=True)  # typed: a NumPy float64 alpha computes in float64, as it did
def _blend_table(alpha: float) -> np.ndarray:
    """256 x 256 uint8: image value x colour value -> the blend, computed as ``overlay``'s formula does."""
    values = np.arange(256, dtype=np.float32)
    table = np.clip(values[:, None] * (1 - alpha) + values[None, :] * alpha, 0, 255).astype(np.uint8)
    return table.ravel()


def overlay(image: np.ndarray, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> np.ndarray:
    """Blend the colour mask over an (H, W, C) uint8 image: clip(image * (1 - alpha) + colour * alpha) in float32.

    Both operands are 8-bit, so the blend is a lookup in a 256 x 256 table of that formula (same values,
    a third of the time of the float arithmetic).
    """
    rgb = display_rgb(image)
    index = rgb.astype(np.uint16) << 8
    index |= colorize(mask, palette)
    return np.take(_blend_table(alpha), index)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type: grey, RGB, RGBA


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(array: np.ndarray, row_filter: str = "none", level: int = 1, strategy: int = zlib.Z_RLE) -> bytes:
    """PNG of a uint8 (H, W[, 1 | 3 | 4]) array with one filter for every row and a chosen zlib strategy.

    PIL tries four filters on every row and offers no choice of them: 2-3x slower than one fixed filter
    with zlib's run-length strategy, which for masks and overlays also gives files of about the same
    size. ``row_filter``: "none" (index masks), "sub" (flat colours), "up" (photo-like images).
    Decodes (any PNG reader) to exactly ``array``. Compressed with zlib-ng where it is installed (the extra
    ``png``; other bytes, the same pixels), else zlib.
    """
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(f"encode_png takes a uint8 (H, W[, 1 | 3 | 4]) array, got {array.dtype} {array.shape}")
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    rows = array.reshape(h, w * channels)
    filtered = np.empty((h, w * channels + 1), np.uint8)
    data = filtered[:, 1:]
    if row_filter == "none":
        filtered[:, 0] = 0
        data[...] = rows
    elif row_filter == "sub":  # each byte minus the same channel of the pixel to its left (mod 256)
        filtered[:, 0] = 1
        data[:, :channels] = rows[:, :channels]
        np.subtract(rows[:, channels:], rows[:, :-channels], out=data[:, channels:])
    elif row_filter == "up":  # each byte minus the one above it
        filtered[:, 0] = 2
        data[:1] = rows[:1]
        np.subtract(rows[1:], rows[:-1], out=data[1:])
    else:
        raise ValueError(f"row_filter must be none, sub or up, got {row_filter!r}")
    deflate = _deflate_lib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS, 9, strategy)
    idat = deflate.compress(filtered.tobytes()) + deflate.flush()
    header = struct.pack(">IIBBBBB", w, h, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return _PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def mask_png(mask: np.ndarray) -> bytes:
    """PNG of an (H, W) class-id mask: 8-bit with no filter and run-length zlib (fast, as small as
    PIL's level 6 on predicted masks), 16-bit through PIL when the ids exceed 255."""
    if mask.dtype == np.uint8 and mask.ndim == 2:
        return encode_png(mask, "none")
    return png_bytes(mask)


def colour_png(mask: np.ndarray, palette: list[list[int]]) -> bytes:
    """RGB PNG of ``colorize(mask, palette)``: "sub" filter (zero inside each region), zlib level 1."""
    return encode_png(colorize(mask, palette), "sub", level=1, strategy=zlib.Z_DEFAULT_STRATEGY)


def overlay_png(image: np.ndarray, mask: np.ndarray, palette: list[list[int]], alpha: float = 0.5) -> bytes:
    """RGB PNG of ``overlay(image, mask, palette, alpha)``: "up" filter, run-length zlib (photo-like)."""
    return encode_png(overlay(image, mask, palette, alpha), "up")


def png_bytes(array: np.ndarray, compress_level: int = 6) -> bytes:
    """PNG of a uint8 (H, W[, 1 | 3 | 4]) array, or of a 16-bit index mask when the ids exceed 255."""
    if array.ndim == 2 and array.dtype != np.uint8:
        image = Image.fromarray(array.astype(np.uint16))
    else:
        image = Image.fromarray(array.squeeze() if array.ndim == 3 and array.shape[2] == 1 else array)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write ``png_bytes(array)`` to ``path``."""
    atomic_write_bytes(path, png_bytes(array))


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
    """Loss, accuracy and mIoU per epoch, train and validation, as one PNG.

    When the rows carry per-class validation IoU (``val_iou_<class>`` columns), a fourth panel shows
    each class's curve, so a class that never takes off is visible.
    """
    epochs = [r["epoch"] for r in history]
    per_class = sorted({k for r in history for k in r if k.startswith(PER_CLASS_IOU)})
    per_class = [k for k in per_class if any(r.get(k) is not None for r in history)]
    panels = 4 if per_class else 3
    fig = _figure(13 / 3 * panels, 3.6)
    if per_class:
        ax = fig.add_subplot(1, panels, 4)
        for key in per_class:
            ys = [r.get(key) for r in history]
            ax.plot(epochs, [float("nan") if y is None else y for y in ys], "-", lw=1, label=key[len(PER_CLASS_IOU) :])
        ax.set_title("validation IoU per class")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2 if len(per_class) > 8 else 1)
    for i, (key, title) in enumerate([("loss", "loss"), ("accuracy", "pixel accuracy"), ("miou", "mean IoU")]):
        ax = fig.add_subplot(1, panels, i + 1)
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{key}") for r in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, [float("nan") if y is None else y for y in ys], style, ms=3, label=split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path) -> None:
    """The confusion matrix, each row (true class) normalised to sum 1, class names on both axes."""
    m = np.asarray(matrix, dtype=np.float64)
    rows = m.sum(axis=1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    n = len(class_names)
    size = max(4.0, 0.45 * n + 2)
    fig = _figure(size + 1, size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 25:
        for t in range(n):
            for p in range(n):
                if norm[t, p] >= 0.005:
                    colour = "white" if norm[t, p] > 0.5 else "black"
                    ax.text(p, t, f"{norm[t, p]:.2f}", ha="center", va="center", fontsize=6, color=colour)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title("confusion matrix (rows normalised)")
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
                    (
                        display_rgb(item) if item.ndim == 3 and (item.dtype != np.uint8 or item.shape[-1] > 4) else item
                    ).squeeze(),
                    cmap="gray" if item.ndim == 2 or item.shape[-1] == 1 else None,
                    interpolation="nearest",
                )
            if r == 0:
                ax.set_title(titles[c])
            ax.axis("off")
    _save(fig, path)
