"""What every importer shares: the sample type, JSON reading, polygon drawing and the dataset writer."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ...errors import DataError
from ...fsio import atomic_write_bytes
from ..classes import ClassList, write_classes
from ..io import read_json as read_json_file
from ..labelmap import LabelMap, apply_label_map


@dataclass
class Sample:
    """One converted pair: the output stem, the image (a file to copy or decoded pixels) and its class ids."""

    name: str
    image: Path | np.ndarray
    mask: np.ndarray  # (H, W) class ids, the ignore index where no label applies


@dataclass
class Export:
    """A labelling tool's export, read: its classes and a lazy stream of samples."""

    classes: ClassList
    samples: Iterable[Sample]


@dataclass
class ImportResult:
    """What ``import_dataset`` wrote."""

    out: Path
    count: int
    classes: ClassList


def read_json(path: Path, what: str) -> Any:
    """Parse a tool's JSON export; a DataError names it as the ``what`` (format) file and says to export again."""
    return read_json_file(path, f"{what} file", "export it again")


def not_format(path: Path, what: str, why: str) -> DataError:
    """The error for a file that is not what the format says."""
    return DataError(
        f"{path} is not a {what} export ({why}); check the format name given to `unetkit datasets import` "
        "and that the file was exported as docs/labels.md describes"
    )


def polygon_mask(points: Sequence[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """Fill a polygon with PIL (outline included), as LabelMe and Label Studio's converter do; size = (H, W)."""
    h, w = size
    im = Image.new("L", (w, h), 0)
    ImageDraw.Draw(im).polygon([(float(x), float(y)) for x, y in points], outline=1, fill=1)
    return np.asarray(im, dtype=bool)


def check_inside(points: Iterable[tuple[float, float]], size: tuple[int, int], path: Path, what: str) -> None:
    """Coordinates must lie within the image (edges included, half a pixel of tolerance)."""
    h, w = size
    for x, y in points:
        if not (-0.5 <= x <= w + 0.5 and -0.5 <= y <= h + 0.5):
            raise DataError(
                f"{path}: {what} has a point ({x:g}, {y:g}) outside the {w}x{h} image; fix the annotation "
                "(or the image size recorded in the file) and export again"
            )


def find_image(name: str, folders: Sequence[Path], path: Path, what: str) -> Path:
    """Locate an image named by an annotation: as given, then by base name in the folders; else a DataError."""
    p = Path(name)
    candidates = [p] if p.is_absolute() else []
    for folder in folders:
        candidates += [folder / p, folder / p.name]
    for c in candidates:
        if c.is_file():
            return c
    shown = ", ".join(str(f) for f in folders[:3]) or "(none)"
    raise DataError(
        f"{path}: the image {name!r} of {what} is missing (looked in {shown}); put the images beside the "
        "export or pass their folder as another SOURCE"
    )


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header (tifffile for TIFFs Pillow cannot open)."""
    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:
        from ..io import read_image

        a = read_image(path)
        return a.shape[0], a.shape[1]


def _png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _prepare_out(out: Path, overwrite: bool) -> tuple[Path, Path]:
    images, masks = out / "images", out / "masks"
    for d in (images, masks):
        if d.exists() and any(d.iterdir()) and not overwrite:
            raise DataError(f"{d} already holds files; choose another --out or pass --overwrite to replace them")
    for d in (images, masks):
        if overwrite and d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
    return images, masks


def _mask_array(ids: np.ndarray, top: int) -> np.ndarray:
    return ids.astype(np.uint8 if top <= 255 else np.uint16)


def write_dataset(
    export: Export,
    out: str | Path,
    *,
    label_map: LabelMap | None = None,
    overwrite: bool = False,
    progress: Callable[[int], object] | None = None,
) -> ImportResult:
    """Write ``out/images``, ``out/masks`` (index PNGs, 16-bit past 256 ids) and ``out/classes.json``."""
    out = Path(out)
    classes = export.classes
    mapped = apply_label_map(label_map, classes) if label_map is not None else None
    final = mapped.classes if mapped is not None else classes
    top = max(len(final) - 1, final.ignore_index or 0)
    images_dir, masks_dir = _prepare_out(out, overwrite)
    seen: set[str] = set()
    count = 0
    for sample in export.samples:
        if sample.name in seen:
            raise DataError(f"two samples of the export are both named {sample.name!r}; rename one of the images")
        seen.add(sample.name)
        ids = sample.mask
        if mapped is not None:
            ids = mapped.map_ids(ids, classes.ignore_index)
        size = image_size(sample.image) if isinstance(sample.image, Path) else sample.image.shape[:2]
        if tuple(size) != tuple(ids.shape):
            raise DataError(
                f"the image of {sample.name!r} is {size[1]}x{size[0]} but its annotation is "
                f"{ids.shape[1]}x{ids.shape[0]} (width x height); export the annotations for this image again"
            )
        if isinstance(sample.image, Path):
            suffix = sample.image.suffix.lower() or ".png"
            atomic_write_bytes(images_dir / f"{sample.name}{suffix}", sample.image.read_bytes())
        else:
            atomic_write_bytes(images_dir / f"{sample.name}.png", _png_bytes(sample.image))
        atomic_write_bytes(masks_dir / f"{sample.name}.png", _png_bytes(_mask_array(ids, top)))
        count += 1
        if progress is not None:
            progress(1)
    if count == 0:
        raise DataError(f"the export has no annotated images, so nothing was written to {out}; check the SOURCE")
    write_classes(out / "classes.json", final)
    return ImportResult(out, count, final)


def json_files(sources: Sequence[Path], what: str) -> Iterator[Path]:
    """The JSON files given, and those inside given folders (sorted)."""
    for s in sources:
        if s.is_dir():
            yield from sorted(s.rglob("*.json"))
        elif s.suffix.lower() == ".json":
            yield s
        elif not s.exists():
            raise DataError(f"{what} source {s} does not exist; check the path")
