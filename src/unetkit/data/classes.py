"""``classes.json``: class names, colours and the ignore index of a data set, written by ``datasets import``.

The file is ``{"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}, ...], "ignore_index": 255}``
(``ignore_index`` null when no pixel is ignored). Ids run 0..K-1 in order; ``train``, ``evaluate``,
``predict``, ``check-data`` and ``serve`` take it as ``--classes FILE`` for names and colours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..fsio import atomic_write_text
from ..palette import default_palette
from .io import read_json


@dataclass
class ClassList:
    """Class names and colours (one per id 0..K-1) and the ignore index (None when nothing is ignored)."""

    names: list[str]
    colors: list[list[int]] = field(default_factory=list)
    ignore_index: int | None = None

    def __post_init__(self) -> None:
        if not self.colors:
            self.colors = default_palette(len(self.names))
        if len(self.colors) != len(self.names):
            raise DataError(f"{len(self.colors)} colours for {len(self.names)} classes")
        if self.ignore_index is not None and 0 <= self.ignore_index < len(self.names):
            raise DataError(
                f"ignore index {self.ignore_index} is a class id (there are {len(self.names)} classes); "
                "use a value >= the number of classes, e.g. 255"
            )

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        classes = [
            {"id": i, "name": n, "color": [int(v) for v in c]}
            for i, (n, c) in enumerate(zip(self.names, self.colors, strict=True))
        ]
        return {"classes": classes, "ignore_index": self.ignore_index}


def default_ignore_index(n_classes: int) -> int:
    """255 when the ids fit in a byte beside it, else 65535 (16-bit masks)."""
    return 255 if n_classes <= 255 else 65535


def write_classes(path: str | Path, classes: ClassList) -> None:
    """Write ``classes.json`` atomically."""
    atomic_write_text(path, json.dumps(classes.to_dict(), indent=2) + "\n")


_FORMAT = (
    'it must be JSON {"classes": [{"id": 0, "name": "background", "color": [0, 0, 0]}, ...], '
    '"ignore_index": 255 or null}, as `unetkit datasets import` writes it'
)


def _bad(path: Path, why: str) -> DataError:
    return DataError(f"{path} is not a classes file ({why}); {_FORMAT}")


def read_classes(path: str | Path) -> ClassList:
    """Read a ``classes.json``; a DataError names the file and what is wrong."""
    path = Path(path)
    data = read_json(path, "classes file", _FORMAT)
    if not isinstance(data, dict) or not isinstance(data.get("classes"), list) or not data["classes"]:
        raise _bad(path, "no non-empty 'classes' list")
    entries = sorted(data["classes"], key=lambda c: c.get("id", -1) if isinstance(c, dict) else -1)
    names, colors = [], []
    for i, c in enumerate(entries):
        if not isinstance(c, dict) or c.get("id") != i or not isinstance(c.get("name"), str):
            raise _bad(path, f"entry {i} must have id {i} and a name (ids run 0..K-1)")
        color = c.get("color", [0, 0, 0])
        if not (
            isinstance(color, list) and len(color) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in color)
        ):
            raise _bad(path, f"class {c['name']!r} has colour {color!r}, not [r, g, b] in 0..255")
        names.append(c["name"])
        colors.append(color)
    ignore = data.get("ignore_index")
    if ignore is not None and (isinstance(ignore, bool) or not isinstance(ignore, int) or ignore < 0):
        raise _bad(path, f"ignore_index {ignore!r} is not a non-negative integer or null")
    try:
        return ClassList(names, colors, ignore)
    except DataError as e:
        raise _bad(path, str(e)) from None


def use_classes(config: Any, path: str | Path) -> Any:
    """``config`` showing the names and colours of a classes file (``--classes`` on predict and serve).

    ``config`` is a loaded ``RunConfig``; the file must list exactly its ``n_classes`` classes.
    """
    classes = read_classes(path)
    n = config.model.n_classes
    if len(classes) != n:
        raise DataError(f"classes file {path} lists {len(classes)} classes but the model predicts {n}; give its own")
    return replace(config, class_names=list(classes.names), palette=[list(c) for c in classes.colors])
