"""Label Studio JSON export (brush RLE and polygon results) -> index masks.

The export is a JSON list of tasks ``{"data": {"image": "/data/upload/1/3f2a9c1e-photo.png"},
"annotations": [{"result": [...]}]}``. A result ``{"type": "brushlabels", "original_width", "original_height",
"value": {"format": "rle", "rle": [bytes...], "brushlabels": [name]}}`` holds Label Studio's brush RLE
(thi.ng rle-pack of the RGBA canvas; the alpha channel is the mask); ``{"type": "polygonlabels",
"value": {"points": [[x%, y%], ...], "polygonlabels": [name]}}`` a polygon in percent of the image.
The first annotation that is not cancelled is used; its results are painted in order (later over
earlier). Classes: ``background`` = 0, then the label names sorted. The image is looked up by its base
name (with or without Label Studio's 8-character upload prefix) in the SOURCE folders and beside the JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from ..classes import ClassList
from ._common import Export, Sample, check_inside, find_image, image_size, not_format, polygon_mask, read_json

WHAT = "Label Studio"
_KINDS = {"brushlabels": "brushlabels", "polygonlabels": "polygonlabels"}
_PREFIX = re.compile(r"^[0-9a-f]{8}-")


class _Bits:
    """Reads big-endian unsigned integers of any width from a byte string, as rle-pack writes them."""

    def __init__(self, data: bytes):
        self.bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
        self.pos = 0

    def read(self, n: int) -> int:
        chunk = self.bits[self.pos : self.pos + n]
        if len(chunk) < n:
            raise ValueError("the RLE ends early")
        self.pos += n
        return int("".join("1" if b else "0" for b in chunk), 2) if n else 0


def decode_rle(rle: Sequence[int]) -> np.ndarray:
    """Label Studio brush RLE -> the flat array of words it encodes (RGBA bytes of the canvas)."""
    bits = _Bits(bytes(rle))
    num = bits.read(32)
    word = bits.read(5) + 1
    sizes = [bits.read(4) + 1 for _ in range(4)]
    out = np.zeros(num, dtype=np.int64)
    i = 0
    while i < num:
        repeat = bits.read(1)
        j = min(num, i + 1 + bits.read(sizes[bits.read(2)]))
        if repeat:
            out[i:j] = bits.read(word)
        else:
            out[i:j] = [bits.read(word) for _ in range(j - i)]
        i = j
    return out


def _brush(value: dict, h: int, w: int, path: Path) -> np.ndarray:
    try:
        flat = decode_rle(value["rle"])
    except (KeyError, TypeError, ValueError) as e:
        raise not_format(path, WHAT, f"a brush result has no valid 'rle' ({e})") from None
    if flat.size != h * w * 4:
        raise DataError(f"{path}: a brush RLE holds {flat.size} values, not {h}x{w}x4 for its image; export again")
    return flat.reshape(h, w, 4)[:, :, 3] > 0


def _polygon(value: dict, h: int, w: int, path: Path) -> np.ndarray:
    pts = [(float(x) * w / 100.0, float(y) * h / 100.0) for x, y in value.get("points", [])]
    if len(pts) < 3:
        raise DataError(f"{path}: a polygon result has fewer than 3 points; fix or delete it in Label Studio")
    check_inside(pts, (h, w), path, f"polygon {value.get('polygonlabels')}")
    return polygon_mask(pts, (h, w))


def _results(task: dict) -> list[dict]:
    for ann in task.get("annotations") or []:
        if isinstance(ann, dict) and not ann.get("was_cancelled"):
            return [r for r in ann.get("result", []) if isinstance(r, dict) and r.get("type") in _KINDS]
    return []


def _image(task: dict, folders: list[Path], path: Path) -> Path:
    ref = str((task.get("data") or {}).get("image", ""))
    if not ref:
        raise not_format(path, WHAT, f"task {task.get('id')} has no data.image")
    name = ref.split("?")[0].rstrip("/").split("/")[-1]
    try:
        return find_image(name, folders, path, f"task {task.get('id')}")
    except DataError:
        return find_image(_PREFIX.sub("", name), folders, path, f"task {task.get('id')}")


def _samples(tasks: list[tuple[Path, dict]], folders: list[Path], ids: dict[str, int]) -> Iterator[Sample]:
    for path, task in tasks:
        image = _image(task, [*folders, path.parent], path)
        h, w = image_size(image)
        mask = np.zeros((h, w), dtype=np.int64)
        for r in _results(task):
            if (r.get("original_height"), r.get("original_width")) not in ((h, w), (None, None)):
                raise DataError(
                    f"{path}: task {task.get('id')} was labelled on a {r.get('original_width')}x"
                    f"{r.get('original_height')} image but {image} is {w}x{h}; use the original image"
                )
            value = r.get("value") or {}
            label = (value.get(r["type"]) or ["?"])[0]
            m = _brush(value, h, w, path) if r["type"] == "brushlabels" else _polygon(value, h, w, path)
            mask[m] = ids[label]
        yield Sample(_PREFIX.sub("", Path(image.name).stem) if image.name else image.stem, image, mask)


def read_label_studio(sources: Sequence[Path]) -> Export:
    """Label Studio JSON export(s) plus image folders -> an Export."""
    jsons = [s for s in sources if s.is_file() and s.suffix.lower() == ".json"]
    if not jsons:
        raise DataError("no Label Studio JSON export among the SOURCEs; export 'JSON' from the project and give it")
    tasks: list[tuple[Path, dict]] = []
    for path in jsons:
        data: Any = read_json(path, WHAT)
        if not isinstance(data, list) or not all(isinstance(t, dict) and "data" in t for t in data):
            raise not_format(path, WHAT, "not a list of tasks with 'data'")
        tasks += [(path, t) for t in data if _results(t)]
    if not tasks:
        raise DataError(f"{jsons[0]} has no task with a brush or polygon annotation: the export is empty")
    labels = sorted({(r["value"].get(r["type"]) or ["?"])[0] for _, t in tasks for r in _results(t)})
    names = ["background", *[n for n in labels if n != "background"]]
    folders = [s for s in sources if s.is_dir()]
    return Export(ClassList(names), _samples(tasks, folders, {n: i for i, n in enumerate(names)}))
