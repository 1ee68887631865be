"""Cityscapes ``*_gtFine_labelIds.png`` -> the 19 training ids, every other label id -> 255 (ignore).

The source is the Cityscapes root (or any folder below ``gtFine``): masks are
``gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (8-bit label ids 0..33) and
images ``leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``. The id -> train id table
is the one of the official cityscapesScripts ``labels.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from ...errors import DataError
from ..classes import ClassList
from ..io import read_mask
from ._common import Export, Sample, not_format

WHAT = "Cityscapes"
SUFFIX = "_gtFine_labelIds.png"
IGNORE = 255
# (name, label id, colour) of the 19 classes trained on, in train-id order
TRAIN_CLASSES = (
    ("road", 7, (128, 64, 128)), ("sidewalk", 8, (244, 35, 232)), ("building", 11, (70, 70, 70)),
    ("wall", 12, (102, 102, 156)), ("fence", 13, (190, 153, 153)), ("pole", 17, (153, 153, 153)),
    ("traffic light", 19, (250, 170, 30)), ("traffic sign", 20, (220, 220, 0)), ("vegetation", 21, (107, 142, 35)),
    ("terrain", 22, (152, 251, 152)), ("sky", 23, (70, 130, 180)), ("person", 24, (220, 20, 60)),
    ("rider", 25, (255, 0, 0)), ("car", 26, (0, 0, 142)), ("truck", 27, (0, 0, 70)), ("bus", 28, (0, 60, 100)),
    ("train", 31, (0, 80, 100)), ("motorcycle", 32, (0, 0, 230)), ("bicycle", 33, (119, 11, 32)),
)  # fmt: skip
N_LABEL_IDS = 34


def train_id_table() -> np.ndarray:
    """label id (0..33) -> train id (0..18) or 255."""
    lut = np.full(N_LABEL_IDS, IGNORE, dtype=np.int64)
    for train_id, (_, label_id, _) in enumerate(TRAIN_CLASSES):
        lut[label_id] = train_id
    return lut


def _image_for(mask: Path) -> Path:
    parts = list(mask.parts)
    if "gtFine" not in parts:
        raise not_format(mask, WHAT, "it is not inside a gtFine/ folder")
    i = len(parts) - 1 - parts[::-1].index("gtFine")
    parts[i] = "leftImg8bit"
    image = Path(*parts[:-1]) / (mask.name[: -len(SUFFIX)] + "_leftImg8bit.png")
    if not image.is_file():
        raise DataError(f"{mask}: its image {image} is missing; download leftImg8bit beside gtFine")
    return image


def _samples(masks: list[Path]) -> Iterator[Sample]:
    lut = train_id_table()
    for m in masks:
        raw = read_mask(m)
        if raw.ndim != 2:
            raise not_format(m, WHAT, "labelIds masks are single-channel; a colour mask is *_gtFine_color.png")
        bad = np.unique(raw[raw >= N_LABEL_IDS])
        if bad.size:
            raise DataError(f"Cityscapes mask {m} holds values {bad[:10].tolist()} that are not label ids 0..33")
        yield Sample(m.name[: -len(SUFFIX)], _image_for(m), lut[raw.astype(np.int64)])


def read_cityscapes(sources: Sequence[Path]) -> Export:
    """Cityscapes folders -> an Export of the 19 train classes (ignore 255)."""
    masks = sorted(
        p for s in sources for p in (s.rglob("*" + SUFFIX) if s.is_dir() else [s]) if p.name.endswith(SUFFIX)
    )
    if not masks:
        raise DataError(f"no *{SUFFIX} files in {', '.join(map(str, sources))}; give the Cityscapes root or gtFine/")
    names = [n for n, _, _ in TRAIN_CLASSES]
    colours = [list(c) for _, _, c in TRAIN_CLASSES]
    return Export(ClassList(names, colours, IGNORE), _samples(masks))
