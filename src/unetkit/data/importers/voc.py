"""Pascal VOC ``SegmentationClass`` palette PNGs -> index masks (the 21 VOC classes, 255 = ignore).

The source is the ``VOC2012`` (or ``VOC2007``) folder: ``SegmentationClass/<id>.png`` are palette
("P") PNGs whose indices are the class ids 0..20, with 255 on object borders and "difficult" regions;
the images are ``JPEGImages/<id>.jpg``. The indices are copied unchanged; 255 becomes the ignore index.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ...errors import DataError
from ..classes import ClassList
from ._common import Export, Sample, find_image, not_format

WHAT = "Pascal VOC"
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_IGNORE = 255


def voc_colormap(n: int = 256) -> list[list[int]]:
    """The VOC palette: the bits of the index spread over r, g and b, high bits first."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append([r, g, b])
    return out


def _read(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            mode = im.mode
            a = np.asarray(im)
    except Exception as e:
        raise DataError(f"VOC mask {path} cannot be read ({e}); export it again") from None
    if mode not in ("P", "L"):
        raise not_format(
            path, WHAT, f"a {mode} image, not a palette PNG of class indices; for colour masks use cvat-mask"
        )
    bad = np.setdiff1d(np.unique(a), [*range(len(VOC_CLASSES)), VOC_IGNORE])
    if bad.size:
        raise DataError(f"VOC mask {path} holds indices {bad[:10].tolist()} beyond the 21 classes and 255 (ignore)")
    return a.astype(np.int64)


def _samples(root: Path, folders: list[Path]) -> Iterator[Sample]:
    seg = root / "SegmentationClass"
    masks = sorted(seg.glob("*.png"))
    if not masks:
        raise DataError(f"{seg} holds no PNG masks: the export is empty")
    for m in masks:
        yield Sample(m.stem, find_image(m.stem + ".jpg", folders, m, "this mask"), _read(m))


def read_voc(sources: Sequence[Path]) -> Export:
    """A VOC2012-style folder (SegmentationClass/ + JPEGImages/) -> an Export."""
    roots = [s for s in sources if (s / "SegmentationClass").is_dir()]
    if not roots:
        raise DataError(f"no SegmentationClass/ folder in {', '.join(map(str, sources))}; give the VOC2012 folder")
    root = roots[0]
    folders = [root / "JPEGImages", *[s for s in sources if s.is_dir() and s != root]]
    classes = ClassList(list(VOC_CLASSES), voc_colormap(len(VOC_CLASSES)), VOC_IGNORE)
    return Export(classes, _samples(root, folders))
