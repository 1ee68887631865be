"""Label maps: merge classes, send classes to the ignore index, drop an offset, rename.

A label map is a JSON file (see docs/labels.md)::

    {
      "reduce_zero_label": false,          # true: id 0 -> ignore, every other id v -> v - 1 (mmsegmentation)
      "ignore": ["sky", 7],                # classes (names or source ids) sent to the ignore index
      "merge": {"vehicle": ["car", "truck", "bus"]},  # members become one class, at the first member's place
      "rename": {"person": "pedestrian"},  # new names (after merging)
      "ignore_index": 255                  # optional; default: the source's, else 255 (65535 past 255 classes)
    }

Any other key whose value is a list is a merge too (``{"car": ["car", "truck", "bus"]}``). The steps
run in that order; the classes left keep their source order and are numbered 0..K-1. The result is a
lookup table (source id -> new id), which is what a run's config stores, so that prediction gives the
mapped ids and names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .classes import ClassList, default_ignore_index
from .io import read_json

_RESERVED = ("reduce_zero_label", "ignore", "merge", "rename", "ignore_index")


@dataclass
class LabelMap:
    """A parsed label-map file (not yet tied to a class list)."""

    reduce_zero_label: bool = False
    ignore: tuple[str | int, ...] = ()
    merge: tuple[tuple[str, tuple[str | int, ...]], ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    ignore_index: int | None = None
    source: str = "label map"


@dataclass
class MappedClasses:
    """The classes after a label map, and the lookup table from source ids to them."""

    classes: ClassList
    lut: list[int]  # lut[source id] = new id, or the ignore index

    def map_ids(self, ids: np.ndarray, source_ignore: int | None = None, path: str | Path | None = None) -> np.ndarray:
        """Map a class-id array through the table; the source's ignore value becomes the new ignore index."""
        return apply_lut(ids, self.lut, self.classes.ignore_index, source_ignore, path)


def apply_lut(
    ids: np.ndarray,
    lut: list[int],
    ignore_index: int | None,
    source_ignore: int | None = None,
    path: str | Path | None = None,
) -> np.ndarray:
    """``lut[ids]``, with ``source_ignore`` sent to ``ignore_index``; a value past the table is a DataError."""
    ids = np.asarray(ids)
    top = max(len(lut) - 1, ignore_index or 0)
    dtype = np.uint8 if top <= 255 else (np.uint16 if top <= 65535 else np.int32)
    table = np.asarray(lut, dtype=np.int64)
    flat = ids.astype(np.int64)
    keep = flat == source_ignore if source_ignore is not None else np.zeros(flat.shape, bool)
    bad = (~keep) & ((flat < 0) | (flat >= len(table)))
    if bad.any():
        values = np.unique(flat[bad])[:10].tolist()
        where = f"mask {path}" if path is not None else "a mask"
        raise DataError(
            f"{where} holds values {values} that the label map does not cover (it maps source ids "
            f"0..{len(table) - 1}); give the source classes (--classes or --n-classes) that the masks use"
        )
    out = table[np.where(keep | bad, 0, flat)]
    if source_ignore is not None and keep.any():  # keep is all False without a source ignore value
        out[keep] = ignore_index if ignore_index is not None else source_ignore
    return out.astype(dtype)


def _refs(value: Any, key: str, path: Path) -> tuple[str | int, ...]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in items):
        raise DataError(f"label map {path}: {key!r} must list class names or ids, got {value!r}")
    return tuple(items)


def parse_label_map(data: Any, path: str | Path = "label map") -> LabelMap:
    """Check and parse the JSON content of a label map."""
    path = Path(path)
    if not isinstance(data, dict):
        raise DataError(f"label map {path} must be a JSON object (see docs/labels.md), got {type(data).__name__}")
    merge = dict(data.get("merge") or {})
    for key, value in data.items():
        if key not in _RESERVED:
            if not isinstance(value, list):
                raise DataError(
                    f"label map {path}: unknown key {key!r}; use {', '.join(_RESERVED)}, or a list value to merge"
                )
            merge[key] = value
    rename = data.get("rename") or {}
    if not isinstance(rename, dict) or not all(isinstance(v, str) for v in rename.values()):
        raise DataError(f'label map {path}: "rename" must be an object of old name -> new name')
    ignore_index = data.get("ignore_index")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise DataError(f'label map {path}: "ignore_index" must be an integer or null')
    return LabelMap(
        reduce_zero_label=bool(data.get("reduce_zero_label", False)),
        ignore=_refs(data.get("ignore", []), "ignore", path),
        merge=tuple((str(k), _refs(v, k, path)) for k, v in merge.items()),
        rename=tuple(rename.items()),
        ignore_index=ignore_index,
        source=str(path),
    )


def load_label_map(path: str | Path) -> LabelMap:
    """Read and parse a label-map JSON file."""
    return parse_label_map(read_json(path, "label map", "see docs/labels.md for the format"), path)


def _resolve(ref: str | int, names: list[str], offset: int, where: str) -> int:
    """A class reference (name, or source id) -> its position in ``names``."""
    if isinstance(ref, int):
        pos = ref - offset
        if not 0 <= pos < len(names):
            raise DataError(f"{where}: class id {ref} is not among the source ids {offset}..{len(names) + offset - 1}")
        return pos
    if ref not in names:
        raise DataError(f"{where}: no class named {ref!r}; the classes are {', '.join(names[:30])}")
    return names.index(ref)


def apply_label_map(label_map: LabelMap, classes: ClassList) -> MappedClasses:
    """Apply the map to a source class list: the new class list and the source-id lookup table."""
    where = f"label map {label_map.source}"
    offset = 1 if label_map.reduce_zero_label else 0
    names, colors = list(classes.names[offset:]), list(classes.colors[offset:])
    target: list[int | None] = list(range(len(names)))  # position -> representative position, None = ignored
    for ref in label_map.ignore:
        target[_resolve(ref, names, offset, where)] = None
    group_names: dict[int, str] = {}
    for new_name, members in label_map.merge:
        positions = [_resolve(m, names, offset, where) for m in members]
        if any(target[p] is None for p in positions):
            raise DataError(f"{where}: merge {new_name!r} names a class that is also ignored")
        head = min(positions)
        for p in positions:
            target[p] = head
        group_names[head] = new_name
    heads = sorted({t for t in target if t is not None})
    new_id = {h: i for i, h in enumerate(heads)}
    rename = dict(label_map.rename)
    new_names = [rename.get(group_names.get(h, names[h]), group_names.get(h, names[h])) for h in heads]
    if len(set(new_names)) != len(new_names):
        raise DataError(f"{where}: two classes end up with the same name ({', '.join(new_names)}); merge them")
    n = len(heads)
    ignore = label_map.ignore_index if label_map.ignore_index is not None else classes.ignore_index
    if ignore is None and (offset or None in target):
        ignore = default_ignore_index(n)
    if ignore is not None and ignore < n:
        raise DataError(f"{where}: ignore_index {ignore} is a class id (there are {n} classes); use e.g. 255")
    lut = [ignore] * offset + [new_id[t] if t is not None else ignore for t in target]
    out = ClassList(new_names, [colors[h] for h in heads], ignore)
    return MappedClasses(out, [int(v) for v in lut])  # type: ignore[arg-type]
