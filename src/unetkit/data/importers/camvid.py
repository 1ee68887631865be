"""CamVid RGB colour masks + ``label_colors.txt`` -> index masks.

``label_colors.txt`` has one ``r g b name`` line per class (tabs or spaces); masks are
``<name>_L.png`` (e.g. ``LabeledApproved_full/0001TP_006690_L.png``) and images ``<name>.png`` in
another SOURCE folder (e.g. ``701_StillsRaw_full/``). Class ids follow the file's line order; the class
named ``Void`` is the ignore index (255) instead of a class. An unknown colour is a DataError.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from ...errors import DataError
from ..classes import ClassList, default_ignore_index
from ._common import Export, Sample, find_image, not_format
from .colour import colour_ids

WHAT = "CamVid"
VOID = "void"


def read_label_colors(path: Path) -> tuple[list[str], list[list[int]]]:
    """Parse ``label_colors.txt`` -> (names, colours) in line order."""
    names, colours = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        try:
            rgb = [int(v) for v in parts[:3]]
            if len(parts) < 4 or not all(0 <= v <= 255 for v in rgb):
                raise ValueError
        except ValueError:
            raise not_format(path, WHAT, f"line {n} {line.strip()!r} is not 'r g b name'") from None
        names.append(" ".join(parts[3:]))
        colours.append(rgb)
    if not names:
        raise DataError(f"{path} lists no classes; the export is empty")
    return names, colours


def _samples(masks: list[Path], folders: list[Path], colours: list[list[int]], ids: list[int]) -> Iterator[Sample]:
    for m in masks:
        stem = m.stem[:-2]
        image = find_image(stem + m.suffix, folders, m, "this mask")
        yield Sample(stem, image, colour_ids(m, colours, ids, WHAT))


def read_camvid(sources: Sequence[Path]) -> Export:
    """label_colors.txt + the folders of *_L.png masks and images -> an Export."""
    txt = [s for s in sources if s.is_file() and s.suffix == ".txt"]
    txt += [p for s in sources if s.is_dir() for p in [s / "label_colors.txt"] if p.is_file()]
    if not txt:
        raise DataError("no label_colors.txt among the SOURCEs; give it (r g b name per line) and the mask folder")
    all_names, colours = read_label_colors(txt[0])
    names = [n for n in all_names if n.lower() != VOID]
    ignore = default_ignore_index(len(names)) if len(names) < len(all_names) else None
    ids = [ignore if n.lower() == VOID else names.index(n) for n in all_names]
    folders = [s for s in sources if s.is_dir()]
    masks = sorted(p for f in folders for p in f.rglob("*_L.png"))
    if not masks:
        raise DataError(f"no *_L.png masks in {', '.join(map(str, folders)) or 'the SOURCEs'}; the export is empty")
    image_folders = sorted({p.parent for f in folders for p in f.rglob("*.png") if not p.stem.endswith("_L")})
    kept = [c for n, c in zip(all_names, colours, strict=True) if n.lower() != VOID]
    return Export(ClassList(names, kept, ignore), _samples(masks, image_folders or folders, colours, ids))  # type: ignore[arg-type]
