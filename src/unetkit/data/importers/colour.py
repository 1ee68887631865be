"""Shared by the colour-mask formats (CVAT, CamVid): RGB colours -> class ids, unknown colours named."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..io import read_mask


def colour_ids(path: Path, colours: Sequence[Sequence[int]], ids: Sequence[int], what: str) -> np.ndarray:
    """Read an RGB mask and map each colour to ``ids[k]`` for ``colours[k]``; an unknown colour is a DataError."""
    raw = read_mask(path)
    if raw.ndim == 2 or raw.shape[2] < 3:
        raise DataError(
            f"{path} is a single-channel image, but {what} masks are RGB colour PNGs; "
            "check the format name (a palette PNG of class ids is the 'voc' format)"
        )
    rgb = raw[:, :, :3].astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    known = np.array([(c[0] << 16) | (c[1] << 8) | c[2] for c in colours], dtype=np.int64)
    order = np.argsort(known)
    pos = np.clip(np.searchsorted(known[order], codes), 0, len(known) - 1)
    found = known[order][pos] == codes
    if not found.all():
        bad = np.unique(codes[~found])[:5]
        shown = ", ".join(f"({v >> 16}, {(v >> 8) & 255}, {v & 255})" for v in bad)
        raise DataError(
            f"{path} holds colours that are not in the {what} class list: {shown} "
            f"({int((~found).sum())} pixels); add them to the colour list, or fix the mask (JPEG-saved masks "
            "change colours at edges: export PNG)"
        )
    return np.asarray(ids, dtype=np.int64)[order][pos]
