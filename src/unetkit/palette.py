"""Default class colours. A leaf module (imports nothing from unetkit): the config fills its palette
from here, and plots, prediction and serving colour masks with it."""

from __future__ import annotations

import colorsys


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
