"""CVAT "Segmentation mask 1.1" (the Pascal VOC colour layout) -> index masks.

The export folder (unzipped) holds ``labelmap.txt`` (``# label:color_rgb:parts:actions`` then one
``name:r,g,b::`` line per label), ``SegmentationClass/<name>.png`` (RGB colour masks),
``SegmentationObject/`` (ignored) and, when exported with images, ``JPEGImages/``. Class ids follow
the labelmap's line order (CVAT writes ``background:0,0,0::`` first); a colour not in the labelmap is
a DataError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import DataError
from ..classes import ClassList
from ..io import is_image_file
from ._common import Export, Sample, find_image, not_format
from .colour import colour_ids

WHAT = "CVAT Segmentation mask 1.1"


def read_labelmap(path: Path) -> tuple[list[str], list[list[int]]]:
    """Parse ``labelmap.txt`` -> (names, colours) in line order."""
    names, colours = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":")
        try:
            rgb = [int(v) for v in parts[1].split(",")]
            if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except (IndexError, ValueError):
            raise not_format(path, WHAT, f"line {n} {line!r} is not 'name:r,g,b::'") from None
        names.append(parts[0])
        colours.append(rgb)
    if not names:
        raise DataError(f"{path} lists no labels: the export is empty; export again from CVAT")
    return names, colours


def _root(sources: Sequence[Path]) -> Path:
    for s in sources:
        if s.is_file() and s.name == "labelmap.txt":
            return s.parent
        if (s / "labelmap.txt").is_file():
            return s
    raise DataError(
        f"no labelmap.txt in {', '.join(map(str, sources))}; give the unzipped CVAT 'Segmentation mask 1.1' "
        "folder (labelmap.txt + SegmentationClass/)"
    )


def _samples(
    root: Path, folders: list[Path], names: list[str], colours: list[list[int]], what: str
) -> Iterator[Sample]:
    seg = root / "SegmentationClass"
    masks = sorted(p for p in seg.rglob("*") if p.is_file() and is_image_file(p)) if seg.is_dir() else []
    if not masks:
        raise DataError(f"{seg} holds no masks: the export is empty (was it exported with annotations?)")
    for m in masks:
        rel = m.relative_to(seg).with_suffix("")
        image = _image(rel, folders, m, what)
        yield Sample(str(rel).replace("/", "_"), image, colour_ids(m, colours, range(len(names)), what))


def _image(rel: Path, folders: list[Path], mask: Path, what: str) -> Path:
    for folder in folders:
        for c in sorted(folder.glob(f"{rel}.*")):
            if is_image_file(c):
                return c
    return find_image(str(rel) + ".jpg", folders, mask, "this mask")


def read_cvat(sources: Sequence[Path]) -> Export:
    """An unzipped CVAT Segmentation mask 1.1 export (+ optional image folders) -> an Export."""
    root = _root(sources)
    names, colours = read_labelmap(root / "labelmap.txt")
    folders = [root / "JPEGImages", *[s for s in sources if s.is_dir() and s != root], root]
    return Export(ClassList(names, colours), _samples(root, folders, names, colours, WHAT))
