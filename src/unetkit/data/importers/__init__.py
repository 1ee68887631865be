"""``unetkit datasets import``: what labelling tools export -> ``images/``, ``masks/`` and ``classes.json``.

One module per format; each turns its export into an ``Export`` (classes + a lazy stream of samples)
and ``write_dataset`` writes it. The spec followed for each format is in docs/labels.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ...errors import DataError
from ..labelmap import LabelMap
from ._common import Export, ImportResult, Sample, write_dataset

FORMATS: tuple[str, ...] = ("coco", "labelme", "cvat-mask", "voc", "cityscapes", "camvid", "label-studio")

__all__ = ["FORMATS", "Export", "ImportResult", "Sample", "import_dataset", "read_export", "write_dataset"]


def read_export(fmt: str, sources: Sequence[str | Path], *, background: bool = True, line_width: int = 10) -> Export:
    """Read an export of format ``fmt`` (one of FORMATS) from its files and folders."""
    paths = [Path(s) for s in sources]
    if not paths:
        raise DataError(f"give the {fmt} export's files or folders as SOURCE")
    if fmt == "coco":
        from .coco import read_coco

        return read_coco(paths, background=background)
    if fmt == "labelme":
        from .labelme import read_labelme

        return read_labelme(paths, line_width=line_width)
    if fmt == "cvat-mask":
        from .cvat import read_cvat as reader
    elif fmt == "voc":
        from .voc import read_voc as reader
    elif fmt == "cityscapes":
        from .cityscapes import read_cityscapes as reader
    elif fmt == "camvid":
        from .camvid import read_camvid as reader
    elif fmt == "label-studio":
        from .label_studio import read_label_studio as reader
    else:
        raise DataError(f"unknown import format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return reader(paths)


def import_dataset(
    fmt: str,
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    background: bool = True,
    line_width: int = 10,
    label_map: LabelMap | None = None,
    overwrite: bool = False,
    progress: Callable[[int], object] | None = None,
) -> ImportResult:
    """Convert a labelling tool's export into ``out/images``, ``out/masks`` and ``out/classes.json``."""
    export = read_export(fmt, sources, background=background, line_width=line_width)
    return write_dataset(export, out, label_map=label_map, overwrite=overwrite, progress=progress)
