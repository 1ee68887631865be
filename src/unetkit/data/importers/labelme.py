"""LabelMe JSON files -> index masks, drawn as LabelMe's own ``shape_to_mask`` draws them (PIL).

Shapes: polygon, rectangle, circle (centre + a point on the circle), line and linestrip (drawn
``line_width`` pixels wide, LabelMe's default 10), mask (a PNG over a box); points are ignored.
Later shapes are painted over earlier ones (the drawing order, as labelme2voc does). Classes: the
order of a ``labels.txt`` given among the SOURCEs (labelme2voc's: ``__ignore__``, ``_background_``,
then one name a line), else ``_background_`` = 0 and the labels sorted by name; ``__ignore__`` shapes
get the ignore index. The image is ``imageData`` when embedded, else ``imagePath`` beside the JSON.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from ...errors import DataError
from ..classes import ClassList, default_ignore_index
from ._common import Export, Sample, check_inside, find_image, json_files, not_format, read_json

WHAT = "LabelMe"
BACKGROUND, IGNORE = "_background_", "__ignore__"
_SKIPPED = ("point", "points")


def _load(path: Path) -> dict[str, Any]:
    data = read_json(path, WHAT)
    if not isinstance(data, dict) or not isinstance(data.get("shapes"), list) or "imagePath" not in data:
        raise not_format(path, WHAT, "no 'shapes' list and 'imagePath'")
    return data


def _draw(shape: dict, size: tuple[int, int], line_width: int, path: Path) -> np.ndarray | None:
    """One shape -> (H, W) bool, or None for shape types that carry no area (points)."""
    kind = shape.get("shape_type") or "polygon"
    if kind in _SKIPPED:
        return None
    pts = [(float(x), float(y)) for x, y in shape.get("points", [])]
    what = f"shape {shape.get('label')!r} ({kind})"
    check_inside(pts, size, path, what)
    h, w = size
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    if kind == "polygon" and len(pts) >= 3:
        draw.polygon(pts, outline=1, fill=1)
    elif kind == "rectangle" and len(pts) == 2:
        (x0, y0), (x1, y1) = pts
        draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=1, fill=1)
    elif kind == "circle" and len(pts) == 2:
        (cx, cy), (px, py) = pts
        r = math.hypot(cx - px, cy - py)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=1, fill=1)
    elif kind in ("line", "linestrip") and len(pts) >= 2:
        draw.line(pts, fill=1, width=line_width)
    elif kind == "mask" and len(pts) == 2 and shape.get("mask"):
        return _box_mask(shape, pts, size, path)
    else:
        raise not_format(path, WHAT, f"{what} has {len(pts)} points, which that shape type cannot have")
    return np.asarray(im, dtype=bool)


def _box_mask(shape: dict, pts: list[tuple[float, float]], size: tuple[int, int], path: Path) -> np.ndarray:
    box = np.asarray(_decode_image(shape["mask"], path)).astype(bool)
    if box.ndim == 3:
        box = box[:, :, 0]
    out = np.zeros(size, dtype=bool)
    x0, y0 = (int(round(v)) for v in pts[0])
    part = out[y0 : y0 + box.shape[0], x0 : x0 + box.shape[1]]
    part[...] = box[: part.shape[0], : part.shape[1]]
    return out


def _decode_image(b64: str, path: Path) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im if im.mode in ("L", "RGB", "RGBA", "1") else im.convert("RGB"))
    except (binascii.Error, OSError, ValueError) as e:
        raise DataError(f"{path}: imageData is not a base64 image ({e}); save the file again in LabelMe") from None


def _class_names(sources: Sequence[Path], files: list[Path]) -> list[str]:
    lists = [s for s in sources if s.is_file() and s.suffix.lower() == ".txt"]
    if lists:
        names = [line.strip() for line in lists[0].read_text().splitlines() if line.strip()]
        names = [n for n in names if n != IGNORE]
        if BACKGROUND not in names:
            names.insert(0, BACKGROUND)
        return names
    labels = {str(s.get("label")) for f in files for s in _load(f)["shapes"]}
    return [BACKGROUND, *sorted(labels - {BACKGROUND, IGNORE})]


def _samples(files: list[Path], names: list[str], ignore: int, line_width: int) -> Iterator[Sample]:
    ids = {n: i for i, n in enumerate(names)}
    for path in files:
        data = _load(path)
        if data.get("imageData"):
            image: Path | np.ndarray = _decode_image(data["imageData"], path)
            size = image.shape[:2]  # type: ignore[union-attr]
        else:
            image = find_image(data["imagePath"], [path.parent], path, "this file")
            from ._common import image_size

            size = image_size(image)
        h, w = data.get("imageHeight") or size[0], data.get("imageWidth") or size[1]
        if (h, w) != tuple(size):
            raise DataError(f"{path}: imageHeight/imageWidth {h}x{w} do not match the image ({size[0]}x{size[1]})")
        mask = np.zeros(size, dtype=np.int64)
        for shape in data["shapes"]:
            label = str(shape.get("label"))
            if label != IGNORE and label not in ids:
                raise DataError(f"{path}: label {label!r} is not in the class list ({', '.join(names)}); add it")
            m = _draw(shape, size, line_width, path)
            if m is not None:
                mask[m] = ignore if label == IGNORE else ids[label]
        yield Sample(path.stem, image, mask)


def read_labelme(sources: Sequence[Path], *, line_width: int = 10) -> Export:
    """LabelMe JSON files (or folders of them, and optionally a labels.txt) -> an Export."""
    files = list(json_files(sources, WHAT))
    if not files:
        raise DataError(f"no LabelMe JSON files in {', '.join(map(str, sources))}; the export is empty")
    names = _class_names(sources, files)
    ignore = default_ignore_index(len(names))
    uses_ignore = any(str(s.get("label")) == IGNORE for f in files for s in _load(f)["shapes"])
    classes = ClassList(names, ignore_index=ignore if uses_ignore else None)
    return Export(classes, _samples(files, names, ignore, line_width))
