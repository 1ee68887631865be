"""Folders of images and masks: listing, pairing, decoding and loading into uint8 tensors.

Pairing is by file name without extension: image ``a.jpg`` pairs with mask ``a.png``, and also with a
mask named with one of MASK_SUFFIXES (``a_mask.png``, ``a_label.png``, ...). Images and masks may share
one folder when the masks carry such a suffix. Every problem found while loading a data set is
collected into one DataError (up to MAX_LISTED files), so that one run shows everything to fix.
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from ..preprocess import preprocess_image, resize_masks
from .io import IMAGE_EXTENSIONS, is_image_file, read_image, read_mask
from .labelmap import apply_lut
from .masks import MASK_MODES, decode_mask, detect_mask_mode, mask_dtype, mask_tensor_dtype

MASK_SUFFIXES: tuple[str, ...] = ("_mask", "_masks", "_label", "_labels", "_seg", "_gt", "-mask", "-label")
MAX_LISTED = 20  # problem files listed in one error message
DETECT_SAMPLES = 8  # masks looked at to detect the mask mode

Pair = tuple[Path, Path]
_EXTS = " ".join(IMAGE_EXTENSIONS)


def natural_key(name: str) -> tuple:
    """Sort key putting "2.png" before "10.png" (numbers compare as numbers, text case-insensitively)."""
    parts = re.split(r"(\d+)", name)
    key = tuple((0, int(p), "") if p.isdigit() else (1, 0, p.lower()) for p in parts if p != "")
    return key, name  # the exact name breaks ties ("a.png" vs "A.png")


def _listing(names: Sequence[str], limit: int = 10) -> str:
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def _walk(folder: Path) -> list[Path]:
    """Every entry under ``folder`` (sub-folders included), hidden files and folders skipped."""
    out: list[Path] = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out += [Path(root) / n for n in names if not n.startswith(".")]
    return out


def list_images(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (IMAGE_EXTENSIONS, hidden files skipped), naturally sorted.

    Only the files directly in it, unless ``recursive`` (then also those in its sub-folders, sorted by
    their path inside ``folder``).
    """
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise DataError(f"folder {folder} does not exist; check the path")
    if not folder.is_dir():
        raise DataError(f"{folder} is a file, not a folder; give the folder that holds the images")
    try:
        entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if recursive:
            found = [p for p in _walk(folder) if is_image_file(p) and p.is_file()]
            if found:
                return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    except OSError as e:
        raise DataError(f"folder {folder} cannot be listed ({e}); check its permissions") from None
    files = [p for p in entries if p.is_file() and is_image_file(p)]
    if not files:
        subdirs = sorted(p.name + "/" for p in entries if p.is_dir())
        others = sorted({p.suffix.lower() or p.name for p in entries if p.is_file()})
        parts: list[str] = []
        if subdirs:
            parts.append(f"subfolders {_listing(subdirs, 5)}")
        if others:
            parts.append(f"other files ({_listing(others, 5)})")
        holds = f"; it holds {' and '.join(parts)}" if parts else "; it is empty"
        fix = (
            "Give the folder that holds the image files"
            if recursive
            else "Give the folder that directly holds the image files"
            + (", or pass --recursive to read its sub-folders too" if subdirs else "")
        )
        raise DataError(f"folder {folder} has no images (looked for {_EXTS}){holds}. {fix}")
    return sorted(files, key=lambda p: natural_key(p.name))


def _mask_base(stem: str) -> str | None:
    """The image stem a suffixed mask name refers to ("a_mask" -> "a"), else None."""
    low = stem.lower()
    for suffix in MASK_SUFFIXES:
        if low.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return None


def _by_stem(files: Sequence[Path], keys: Sequence[str], what: str, folder: Path) -> dict[str, Path]:
    out: dict[str, list[Path]] = {}
    for f, k in zip(files, keys, strict=True):
        out.setdefault(k, []).append(f)
    dupes = [group for group in out.values() if len(group) > 1]
    if dupes:
        listed = "; ".join(" and ".join(p.name for p in g) for g in dupes[:10])
        raise DataError(
            f"{what} folder {folder} has files that differ only in extension or mask suffix "
            f"({listed}{' ...' if len(dupes) > 10 else ''}), so pairing is ambiguous; "
            "keep one file per name"
        )
    return {k: g[0] for k, g in out.items()}


def _rel_stem(p: Path, root: Path, recursive: bool) -> str:
    """The pairing name of ``p``: its stem, prefixed by its sub-folder inside ``root`` when recursive."""
    if not recursive:
        return p.stem
    parent = p.parent.relative_to(root).as_posix()
    return p.stem if parent == "." else f"{parent}/{p.stem}"


def pair_files(images_dir: str | Path, masks_dir: str | Path, *, recursive: bool = False) -> list[Pair]:
    """Pair images with masks by file name without extension (mask suffixes like ``_mask`` allowed).

    Returns (image, mask) pairs in natural order of the image names; any unpaired file is an error.
    With ``recursive`` sub-folders are read too, and a pair shares its path inside the two folders
    (``images/city1/a.jpg`` with ``masks/city1/a.png``).
    """
    images_dir, masks_dir = Path(images_dir).expanduser(), Path(masks_dir).expanduser()
    images = list_images(images_dir, recursive=recursive)
    masks = list_images(masks_dir, recursive=recursive)
    if images_dir.resolve() == masks_dir.resolve():  # one folder: masks are the suffixed files
        masks = [p for p in images if _mask_base(p.stem) is not None]
        images = [p for p in images if _mask_base(p.stem) is None]
        if not masks or not images:
            raise DataError(
                f"images and masks share the folder {images_dir}, so masks must be named like "
                f"the image plus a suffix ({', '.join(MASK_SUFFIXES)}); found "
                f"{len(images)} images and {len(masks)} masks. Give separate folders instead"
            )
    by_image = _by_stem(images, [_rel_stem(p, images_dir, recursive) for p in images], "image", images_dir)
    keys = []
    for m in masks:
        stem = _rel_stem(m, masks_dir, recursive)
        base = _mask_base(stem)
        keys.append(stem if stem in by_image or base is None or base not in by_image else base)
    by_mask = _by_stem(masks, keys, "mask", masks_dir)
    lonely_images = [p.name for k, p in by_image.items() if k not in by_mask]
    lonely_masks = [p.name for k, p in by_mask.items() if k not in by_image]
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            parts.append(
                f"{len(lonely_images)} image(s) in {images_dir} without a mask: "
                f"{_listing(sorted(lonely_images, key=natural_key))}"
            )
        if lonely_masks:
            parts.append(
                f"{len(lonely_masks)} mask(s) in {masks_dir} without an image: "
                f"{_listing(sorted(lonely_masks, key=natural_key))}"
            )
        raise DataError(
            "unpaired files: " + "; ".join(parts) + ". Masks pair with images by file name without "
            "extension (a.jpg with a.png or a_mask.png); rename or remove the unpaired files"
        )
    return [(by_image[k], by_mask[k]) for k in sorted(by_image, key=lambda k: natural_key(by_image[k].name))]


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files, folders (their images) or glob patterns -> image paths, in order, without duplicates."""
    if not inputs:
        raise DataError("no input images given; pass files, folders or glob patterns such as 'data/*.png'")
    out: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        text = os.path.expanduser(str(item))
        p = Path(text)
        if p.is_dir():
            found = list_images(p)
        elif p.is_file():
            found = [p]
        elif any(ch in text for ch in "*?["):
            matches = [Path(m) for m in glob.glob(text, recursive=True)]
            found = sorted((m for m in matches if m.is_file() and is_image_file(m)), key=lambda m: natural_key(str(m)))
            if not found:
                extra = f" ({len(matches)} non-image matches)" if matches else ""
                raise DataError(
                    f"the pattern {item!r} matches no image files{extra} (looked for {_EXTS}); "
                    "check the pattern (quote it so the shell does not expand it)"
                )
        else:
            raise DataError(f"input {item!r} does not exist (not a file, folder or glob pattern); check the path")
        for f in found:
            if f not in seen:
                seen.add(f)
                out.append(f)
    return out


def _sample_indices(n: int, k: int) -> list[int]:
    return sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, k))})


def _image_dtype(pairs: Sequence[Pair]) -> torch.dtype:
    """int32 (16-bit values) when the first readable image is 16-bit, else uint8."""
    for image_path, _ in pairs[:DETECT_SAMPLES]:
        try:
            return torch.int32 if read_image(image_path).dtype == np.uint16 else torch.uint8
        except DataError:
            continue  # reported with the other problems
    return torch.uint8


def resolve_mask_mode(
    pairs: Sequence[Pair],
    mask_mode: str,
    *,
    n_classes: int,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
    read: dict[int, np.ndarray] | None = None,
) -> str:
    """The mask mode to use: ``mask_mode`` itself, or for "auto" the one detected from up to
    DETECT_SAMPLES masks spread over the set. The masks read to detect it are left in ``read``
    (pair index -> raw mask), so that a loader need not read them twice."""
    if not pairs:
        raise DataError("no image/mask pairs to load")
    if mask_mode != "auto":
        if mask_mode not in MASK_MODES:
            raise DataError(f"unknown mask mode {mask_mode!r}; choose auto or one of {', '.join(MASK_MODES)}")
        if mask_mode == "palette" and not palette:
            raise DataError(
                "mask mode 'palette' needs a palette: pass --palette colours.json (JSON of class name -> [r, g, b])"
            )
        return mask_mode
    picks = _sample_indices(len(pairs), DETECT_SAMPLES)
    raws = {} if read is None else read
    for i in picks:
        try:
            raws[i] = read_mask(pairs[i][1])
        except DataError:
            pass  # a loader reports it with the other problems
    if not raws:
        bad = ", ".join(str(pairs[i][1]) for i in picks[:5])
        raise DataError(
            f"none of the masks looked at to detect the mask mode could be read ({bad}); "
            "fix or remove them, or check that the masks folder is right"
        )
    used = list(raws)
    return detect_mask_mode(
        [raws[i] for i in used], n_classes, ignore_index=ignore_index, paths=[pairs[i][1] for i in used]
    )


class PairError(DataError):
    """Every problem of one image/mask pair (both files may be unreadable), one message each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def source_classes(n_classes: int, label_map: Sequence[int] | None) -> int:
    """How many class ids the mask files hold: the label map's source ids when there is one."""
    return len(label_map) if label_map else n_classes


def decode_pair(
    image_path: Path,
    mask_path: Path,
    input_size: tuple[int, int, int],
    *,
    n_classes: int,
    mask_mode: str,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
    resize: str = "bilinear",
    label_map: Sequence[int] | None = None,
    raw: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair -> (image (C, H, W), (H, W) class ids) at ``input_size``; PairError naming each problem.

    The one decoding step of both data sources (the in-memory cache and the stream). With a
    ``label_map`` (source id -> class id, ``config.data.label_map``) the masks hold source ids, which
    are checked against the map's length and mapped; ``raw`` is the mask when it was read already.
    """
    errors: list[str] = []
    image = None
    try:
        image = read_image(image_path)
    except DataError as e:
        errors.append(str(e))
    try:
        raw = read_mask(mask_path) if raw is None else raw
    except DataError as e:
        errors.append(str(e))
    if image is None or raw is None:
        raise PairError(errors)
    if image.shape[:2] != raw.shape[:2]:
        raise PairError(
            [
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{raw.shape[1]}x{raw.shape[0]} (width x height); a mask must match its image's size: "
                "re-export the mask or remove the pair"
            ]
        )
    n_source = source_classes(n_classes, label_map)
    try:
        ids = decode_mask(raw, mask_mode, n_source, palette=palette, ignore_index=ignore_index, path=mask_path)
        if label_map:
            ids = apply_lut(ids, list(label_map), ignore_index, ignore_index, mask_path)
    except DataError as e:
        raise PairError([str(e)]) from None
    h, w, c = (int(v) for v in input_size)
    x = preprocess_image(image, (h, w, c), resize)[0]
    y = resize_masks(torch.from_numpy(ids.astype(mask_dtype(n_classes, ignore_index), copy=False))[None], (h, w))[0]
    return x, y


def load_pairs(
    pairs: Sequence[Pair],
    input_size: tuple[int, int, int],
    *,
    n_classes: int,
    mask_mode: str = "auto",
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
    resize: str = "bilinear",
    progress: Callable[[int], object] | None = None,
    workers: int = 4,
    skip_bad: bool = False,
    log: Callable[[str], object] | None = None,
    label_map: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Read, decode and resize every pair -> (images uint8 (N, C, H, W), masks (N, H, W), mask mode used).

    Masks are uint8 when the class ids fit, else int32; they are resized with nearest neighbour only.
    ``mask_mode="auto"`` detects the mode from up to DETECT_SAMPLES masks spread over the set.
    Decoding (``decode_pair``) runs in a small thread pool (PIL releases the GIL); ``progress(1)`` is
    called per pair. All bad pairs are reported together in one DataError; with ``skip_bad`` they are
    left out instead and reported through ``log``.
    """
    raws: dict[int, np.ndarray] = {}
    n_source = source_classes(n_classes, label_map)
    mask_mode = resolve_mask_mode(
        pairs, mask_mode, n_classes=n_source, palette=palette, ignore_index=ignore_index, read=raws
    )
    h, w, c = (int(v) for v in input_size)
    n = len(pairs)
    images = torch.empty((n, c, h, w), dtype=_image_dtype(pairs))
    masks = torch.empty((n, h, w), dtype=mask_tensor_dtype(n_classes, ignore_index))
    options: dict[str, Any] = dict(
        n_classes=n_classes, mask_mode=mask_mode, palette=palette, ignore_index=ignore_index, resize=resize
    )

    def load_one(i: int) -> list[str]:
        try:
            x, y = decode_pair(
                Path(pairs[i][0]), Path(pairs[i][1]), (h, w, c), label_map=label_map, raw=raws.pop(i, None), **options
            )
        except PairError as e:
            return e.problems
        images[i], masks[i] = x, y
        return []

    problems = _run_all(load_one, n, workers, progress)
    if problems:
        report = _problem_report(problems, pairs, mask_mode)
        if not skip_bad or len(problems) == n:
            raise DataError(report + "\nFix or remove these files and run again" + ("" if skip_bad else _SKIP_HINT))
        (log or print)(f"skipped (--skip-bad): {report}")
        keep = torch.tensor([i for i in range(n) if i not in problems], dtype=torch.long)
        images, masks = images[keep], masks[keep]
    return images, masks, mask_mode


def _run_all(
    load_one: Callable[[int], list[str]], n: int, workers: int, progress: Callable[[int], object] | None
) -> dict[int, list[str]]:
    """``load_one(i)`` for i in 0..n-1, in a thread pool of up to ``workers``; the problems by index."""
    workers = max(1, min(workers, os.cpu_count() or 1, n))

    def outcomes() -> Iterator[tuple[int, list[str]]]:
        if workers == 1:
            yield from ((i, load_one(i)) for i in range(n))
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unetkit-load") as pool:
            futures = {pool.submit(load_one, i): i for i in range(n)}
            for future in as_completed(futures):
                yield futures[future], future.result()

    problems: dict[int, list[str]] = {}
    for i, errors in outcomes():
        if errors:
            problems[i] = errors
        if progress is not None:
            progress(1)
    return problems


_SKIP_HINT = " (or pass --skip-bad to train without them)."


def _problem_report(problems: dict[int, list[str]], pairs: Sequence[Pair], mask_mode: str) -> str:
    """The bad pairs in one listing: one mistake made in many files (the same message but for the file
    name and pixel counts) is listed once, with the number and names of the other files."""
    groups: dict[str, list[tuple[str, Path]]] = {}
    for i in sorted(problems):
        image, mask = (Path(p) for p in pairs[i])
        for m in problems[i]:
            key = re.sub(r"\d+ px", "", m.replace(str(mask), "<mask>").replace(str(image), "<image>"))
            groups.setdefault(key, []).append((m, mask if str(mask) in m else image))
    messages = []
    for members in groups.values():
        first, others = members[0][0], [p.name for _, p in members[1:]]
        messages.append(first + (f" (the same in {len(others)} more: {_listing(others, 5)})" if others else ""))
    n = len(pairs)
    listed = "\n".join(f"  - {m}" for m in messages[:MAX_LISTED])
    more = f"\n  ... and {len(messages) - MAX_LISTED} more" if len(messages) > MAX_LISTED else ""
    return f"{len(problems)} of {n} image/mask pairs could not be loaded (mask mode {mask_mode}):\n{listed}{more}"


def guess_channels(infos: Sequence[tuple[int, int, int] | None]) -> tuple[int, str | None]:
    """Input channels for images with these ``header_info``s: 1 when all are grayscale, else 3 (the seed);
    a note when grayscale and colour images are mixed (the grayscale ones are then repeated to RGB)."""
    known = [i for i in infos if i is not None]
    gray = sum(1 for _, _, c in known if c == 1)
    if known and gray == len(known):
        return 1, None
    if gray:
        return 3, (
            f"{gray} of {len(known)} training images are grayscale and the others colour: training on 3 "
            "channels (grayscale images repeated to RGB); pass --channels 1 to train on grayscale instead"
        )
    return 3, None


def aspect_note(infos: Sequence[tuple[int, int, int] | None], input_size: tuple[int, int], multiple: int) -> str | None:
    """A warning when the images' usual aspect ratio differs from ``input_size``'s: resizing distorts them."""
    ratios = sorted(w / h for w, h, _ in (i for i in infos if i is not None) if h > 0 and w > 0)
    h, w = input_size
    if not ratios or h <= 0 or w <= 0:  # a bad --input-size is refused by the config with its own message
        return None
    ratio = ratios[len(ratios) // 2]
    if abs(math.log(ratio / (w / h))) < math.log(1.1):
        return None
    suggest = max(multiple, round(h * ratio / multiple) * multiple)
    return (
        f"the training images are mostly {ratio:.2f}:1 (width:height) but the input size {h}x{w} (--input-size "
        f"H W) is {w / h:.2f}:1, so every image is stretched when resized; keep the aspect, e.g. "
        f"--input-size {h} {suggest}"
    )
