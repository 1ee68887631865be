"""COCO instances or stuff JSON (+ its image folder) -> index masks, through pycocotools.

Categories are sorted by their COCO id and numbered 1..K (0 is the background: pixels no annotation
covers); with ``background=False`` they are numbered 0..K-1 and unlabelled pixels get the ignore
index. Overlaps: annotations are painted largest area first, so a smaller object lying on a larger one
stays visible (ties keep file order). Crowd (RLE) regions get their category like any other.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError, UnetkitError
from ..classes import ClassList, default_ignore_index
from ._common import Export, Sample, check_inside, find_image, not_format, read_json

WHAT = "COCO"


def _mask_api():
    try:
        from pycocotools import mask as mask_utils
    except ImportError:
        raise UnetkitError("importing COCO needs pycocotools: pip install 'unetkit[coco]'") from None
    return mask_utils


def _check_file(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise not_format(path, WHAT, "no 'images' and 'categories' lists")
    if not isinstance(data.get("annotations", []), list):
        raise not_format(path, WHAT, "'annotations' is not a list")


def _image_folders(path: Path, folders: Sequence[Path]) -> list[Path]:
    split = path.stem.split("_")[-1]  # instances_val2017.json -> val2017
    near = [path.parent, path.parent / split, path.parent.parent / split, path.parent / "images"]
    return [*folders, *near, path.parent.parent / "images"]


def _decode(seg: Any, h: int, w: int, path: Path, ann_id: Any) -> np.ndarray:
    """One annotation's segmentation (polygons, uncompressed or compressed RLE) -> (H, W) bool."""
    mask_utils = _mask_api()
    what = f"annotation {ann_id}"
    if isinstance(seg, list):
        polys = [p for p in seg if isinstance(p, list) and len(p) >= 6]
        if not polys:
            raise DataError(f"{path}: {what} has no polygon with 3 or more points; fix or delete it")
        for p in polys:
            check_inside(zip(p[0::2], p[1::2]), (h, w), path, what)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if list(seg["size"]) != [h, w]:
            raise DataError(f"{path}: {what} is an RLE of size {seg['size']} for a {h}x{w} (HxW) image; export again")
        if isinstance(seg["counts"], list):
            rle = mask_utils.frPyObjects(seg, h, w)
        else:
            counts = seg["counts"].encode() if isinstance(seg["counts"], str) else seg["counts"]
            rle = {"size": [h, w], "counts": counts}
    else:
        raise not_format(path, WHAT, f"{what} has a segmentation that is neither polygons nor RLE")
    with warnings.catch_warnings():  # pycocotools 2.0 on numpy 2: a DeprecationWarning about copy=False
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle).astype(bool)


def _categories(files: list[tuple[Path, dict]]) -> dict[int, str]:
    cats: dict[int, str] = {}
    for path, data in files:
        for c in data["categories"]:
            if not isinstance(c, dict) or not isinstance(c.get("id"), int) or "name" not in c:
                raise not_format(path, WHAT, f"category {c!r} has no integer id and name")
            if cats.get(c["id"], c["name"]) != c["name"]:
                raise DataError(f"{path}: category id {c['id']} is {c['name']!r} here but {cats[c['id']]!r} elsewhere")
            cats[c["id"]] = str(c["name"])
    return cats


def _samples(
    files: list[tuple[Path, dict]], folders: Sequence[Path], cat_ids: dict[int, int], fill: int
) -> Iterator[Sample]:
    for path, data in files:
        by_image: dict[Any, list[dict]] = {}
        for a in data.get("annotations", []):
            by_image.setdefault(a.get("image_id"), []).append(a)
        for im in data["images"]:
            if not isinstance(im, dict) or not {"id", "file_name", "height", "width"} <= set(im):
                raise not_format(path, WHAT, f"image entry {im!r} lacks id, file_name, height or width")
            h, w = int(im["height"]), int(im["width"])
            image = find_image(im["file_name"], _image_folders(path, folders), path, f"image id {im['id']}")
            mask = np.full((h, w), fill, dtype=np.int64)
            decoded = []
            for order, a in enumerate(by_image.get(im["id"], [])):
                if a.get("category_id") not in cat_ids:
                    raise DataError(f"{path}: annotation {a.get('id')} has category {a.get('category_id')} not listed")
                m = _decode(a.get("segmentation"), h, w, path, a.get("id"))
                decoded.append((-int(m.sum()), order, cat_ids[a["category_id"]], m))
            for _, _, cid, m in sorted(decoded, key=lambda t: (t[0], t[1])):
                mask[m] = cid
            yield Sample(Path(im["file_name"]).stem, image, mask)


def read_coco(sources: Sequence[Path], *, background: bool = True) -> Export:
    """COCO JSON files plus (optionally) their image folders -> an Export."""
    jsons = [s for s in sources if s.is_file() and s.suffix.lower() == ".json"]
    folders = [s for s in sources if s.is_dir()]
    missing = [s for s in sources if not s.exists()]
    if missing:
        raise DataError(f"COCO source {missing[0]} does not exist; check the path")
    if not jsons:
        raise DataError("no COCO JSON file among the SOURCEs; give the annotation file (e.g. instances_val2017.json)")
    files = []
    for path in jsons:
        data = read_json(path, WHAT)
        _check_file(data, path)
        files.append((path, data))
    cats = _categories(files)
    if not cats or not any(d["images"] for _, d in files):
        raise DataError(f"{jsons[0]} lists no categories or no images: the export is empty; export again")
    order = sorted(cats)
    offset = 1 if background else 0
    names = (["background"] if background else []) + [cats[i] for i in order]
    ignore = None if background else default_ignore_index(len(names))
    cat_ids = {cid: i + offset for i, cid in enumerate(order)}
    fill = 0 if background else int(ignore)  # type: ignore[arg-type]
    return Export(ClassList(names, ignore_index=ignore), _samples(files, folders, cat_ids, fill))
