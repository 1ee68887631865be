"""Palettes, colour masks, overlays, side-by-side pictures and training curves."""

from __future__ import annotations

import colorsys

import numpy as np


def default_palette(n_classes: int) -> list[list[int]]:
    """Distinct colours: black for class 0, then evenly spaced hues (golden-ratio steps)."""
    colours = [[0, 0, 0]]
    for i in range(1, n_classes):
        h = (i * 0.618033988749895) % 1.0
        s = 0.65 + 0.35 * ((i // 7) % 2)
        v = 0.95 - 0.25 * ((i // 3) % 2)
        colours.append([round(c * 255) for c in colorsys.hsv_to_rgb(h, s, v)])
    if n_classes == 2:
        colours[1] = [255, 255, 255]
    return colours[:n_classes]


def colorize(mask: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ids outside the palette are shown black."""
    table = np.zeros((256 if mask.max(initial=0) < 256 else int(mask.max()) + 1, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8)
    return table[mask.astype(np.int64)]
