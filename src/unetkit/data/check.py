"""``unetkit check-data``: find what would make training fail or silently learn the wrong thing, first.

For 2D folders, what nnU-Net's ``--verify_dataset_integrity`` and its dataset fingerprint do: pairing,
readability, image/mask size agreement, channels and bit depth, the mask encoding detected and why,
mask values against ``n_classes`` and the ignore index, per-class pixels and images, classes never
present (and present in validation but not in training), image sizes and what ``--input-size`` fits
them, per-channel mean/std, exact duplicates by content hash, and suggested class weights.

It streams: one pair is decoded at a time and only counters are kept (sizes and hashes are a few
bytes per file), so a 10,000-image folder is checked in bounded memory. A problem is an ``error``
when training would fail or learn the wrong thing (``ok`` is then False and the CLI exits non-zero),
else a ``warning``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from ..fsio import atomic_write_text
from .classes import ClassList
from .folders import _mask_base, list_images, natural_key
from .io import read_image, read_mask
from .labelmap import LabelMap, MappedClasses, apply_label_map
from .masks import decode_mask, detect_mask_mode

DETECT_SAMPLES = 8
MULTIPLE = 16  # the seed's U-Net halves its input 4 times


@dataclass
class Problem:
    file: str
    problem: str
    severity: str = "error"  # "error": train would fail or learn wrong; "warning": worth a look


@dataclass
class _Split:
    """Counters for one side (train or val), updated one pair at a time."""

    n_classes: int
    pixels: np.ndarray = field(init=False)
    images: np.ndarray = field(init=False)
    pairs: int = 0
    ignored: int = 0

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.n_classes, np.int64)
        self.images = np.zeros(self.n_classes, np.int64)

    def add(self, ids: np.ndarray, ignore_index: int | None) -> None:
        flat = ids.reshape(-1).astype(np.int64)
        if ignore_index is not None:
            self.ignored += int((flat == ignore_index).sum())
        counts = np.bincount(flat[(flat >= 0) & (flat < self.n_classes)], minlength=self.n_classes)
        self.pixels += counts[: self.n_classes]
        self.images += counts[: self.n_classes] > 0


@dataclass
class CheckReport:
    """What check-data found; ``to_dict`` is the JSON it writes."""

    pairs: int
    val_pairs: int
    problems: list[Problem]
    classes: list[dict[str, Any]]
    sizes: dict[str, Any]
    mean: list[float]
    std: list[float]
    duplicates: list[dict[str, Any]]
    mask_mode: str
    mask_mode_reason: str
    formats: dict[str, int]
    class_weights: dict[str, list[float]]
    ignore_index: int | None

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "pairs": self.pairs,
            "val_pairs": self.val_pairs,
            "problems": [vars(p) for p in self.problems],
            "classes": self.classes,
            "ignore_index": self.ignore_index,
            "sizes": self.sizes,
            "mean": self.mean,
            "std": self.std,
            "duplicates": self.duplicates,
            "mask_mode": self.mask_mode,
            "mask_mode_reason": self.mask_mode_reason,
            "formats": self.formats,
            "class_weights": self.class_weights,
        }


def pair_lenient(images_dir: str | Path, masks_dir: str | Path) -> tuple[list[tuple[Path, Path]], list[Problem]]:
    """Pair as ``folders.pair_files`` does (name without extension, mask suffixes), reporting unpaired files."""
    images, masks = list_images(images_dir), list_images(masks_dir)
    if Path(images_dir).resolve() == Path(masks_dir).resolve():
        masks = [p for p in images if _mask_base(p.stem) is not None]
        images = [p for p in images if _mask_base(p.stem) is None]
    by_image: dict[str, Path] = {}
    problems = []
    for p in images:
        if p.stem in by_image:
            problems.append(Problem(str(p), f"same name as {by_image[p.stem].name}: pairing is ambiguous"))
        by_image.setdefault(p.stem, p)
    by_mask: dict[str, Path] = {}
    for m in masks:
        base = _mask_base(m.stem)
        key = m.stem if m.stem in by_image or base is None or base not in by_image else base
        if key in by_mask:
            problems.append(Problem(str(m), f"same name as {by_mask[key].name}: pairing is ambiguous"))
        by_mask.setdefault(key, m)
    problems += [Problem(str(p), "image without a mask") for k, p in by_image.items() if k not in by_mask]
    problems += [Problem(str(p), "mask without an image") for k, p in by_mask.items() if k not in by_image]
    keys = sorted((k for k in by_image if k in by_mask), key=lambda k: natural_key(by_image[k].name))
    return [(by_image[k], by_mask[k]) for k in keys], problems


def _describe(path: Path, image: np.ndarray) -> str:
    """'8-bit RGB'-style description of an image file (bit depth from the file's mode)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
    except Exception:
        mode = ""
    bits = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(mode, 8 * image.itemsize)
    names = {1: "gray", 2: "gray+alpha", 3: "RGB", 4: "RGBA"}
    return f"{bits}-bit {names.get(image.shape[2], f'{image.shape[2]}-band')}"


def _mode_reason(mode: str, raws: list[np.ndarray], n_classes: int, ignore: int | None) -> str:
    gray = [r if r.ndim == 2 else r[..., 0] for r in raws if r.ndim == 2 or (r[..., :3] == r[..., :1]).all()]
    values = np.unique(np.concatenate([np.unique(g) for g in gray])) if gray else np.array([])
    if ignore is not None:
        values = values[values != ignore]
    shown = ", ".join(str(int(v)) for v in values[:8]) + (" ..." if len(values) > 8 else "")
    if mode == "binary":
        return f"gray masks holding only {shown} with 2 classes: 255 (or 1) is the foreground"
    if mode == "index":
        return f"gray (or palette-index) masks whose values {shown} are all below n_classes={n_classes}"
    if mode == "channels":
        return f"colour masks whose channel maximum is below n_classes={n_classes} (the seed's CARLA encoding)"
    return f"colour masks mapped through the class colours ({n_classes} classes)"


def _infer_n_classes(raws: list[np.ndarray], ignore: int | None) -> int:
    values = np.unique(np.concatenate([np.unique(r[..., :3] if r.ndim == 3 else r) for r in raws]))
    values = values[values != ignore] if ignore is not None else values
    if len(values) and set(values.tolist()) <= {0, 255}:
        return 2
    return int(values.max()) + 1 if len(values) else 1


class _Checker:
    """Streams pairs through the decoders and the counters."""

    def __init__(
        self, mode: str, n_source: int, classes: ClassList, mapped: MappedClasses | None, palette: list | None
    ) -> None:
        self.mode, self.n_source, self.mapped, self.palette = mode, n_source, mapped, palette
        self.classes = mapped.classes if mapped is not None else classes
        self.ignore = self.classes.ignore_index
        self.source_ignore = classes.ignore_index
        self.problems: list[Problem] = []
        self.sizes: list[tuple[int, int]] = []
        self.formats: dict[str, int] = {}
        self.hashes: dict[str, list[tuple[str, str]]] = {}
        self.sum: np.ndarray | None = None
        self.sumsq: np.ndarray | None = None
        self.count = 0

    def run(self, pairs: list[tuple[Path, Path]], split: _Split, side: str, progress: Callable | None) -> None:
        for image_path, mask_path in pairs:
            self._one(image_path, mask_path, split, side)
            if progress is not None:
                progress(1)

    def _one(self, image_path: Path, mask_path: Path, split: _Split, side: str) -> None:
        try:
            data = image_path.read_bytes()
            image = read_image(image_path)
        except (DataError, OSError) as e:
            self.problems.append(Problem(str(image_path), f"unreadable: {e}"))
            return
        self.hashes.setdefault(hashlib.sha256(data).hexdigest(), []).append((side, str(image_path)))
        desc = _describe(image_path, image)
        self.formats[desc] = self.formats.get(desc, 0) + 1
        try:
            raw = read_mask(mask_path)
            if raw.shape[:2] != image.shape[:2]:
                raise DataError(
                    f"mask is {raw.shape[1]}x{raw.shape[0]} but its image {image_path.name} is "
                    f"{image.shape[1]}x{image.shape[0]} (width x height)"
                )
            ids = decode_mask(
                raw, self.mode, self.n_source, palette=self.palette, ignore_index=self.source_ignore, path=mask_path
            )
            if self.mapped is not None:
                ids = self.mapped.map_ids(ids, self.source_ignore, mask_path)
        except DataError as e:
            self.problems.append(Problem(str(mask_path), str(e)))
            return
        split.pairs += 1
        split.add(ids, self.ignore)
        if side == "train":
            self._image_stats(image)
        self.sizes.append(image.shape[:2])

    def _image_stats(self, image: np.ndarray) -> None:
        scale = 65535.0 if image.dtype == np.uint16 else 255.0
        x = image.reshape(-1, image.shape[2]).astype(np.float64) / scale
        if self.sum is None or len(self.sum) != x.shape[1]:
            if self.sum is not None:
                self.problems.append(Problem("", "images have different channel counts", "warning"))
            self.sum, self.sumsq, self.count = np.zeros(x.shape[1]), np.zeros(x.shape[1]), 0
        self.sum += x.sum(0)
        self.sumsq += (x * x).sum(0)
        self.count += x.shape[0]


def _size_summary(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    if not sizes:
        return {}
    a = np.asarray(sizes)
    med = np.median(a, axis=0)
    off = int(((a % MULTIPLE) != 0).any(axis=1).sum())
    h, w = (max(MULTIPLE, int(round(v / MULTIPLE)) * MULTIPLE) for v in med)
    hmin, wmin = (max(MULTIPLE, int(v) // MULTIPLE * MULTIPLE) for v in a.min(axis=0))
    return {
        "min": [int(v) for v in a.min(axis=0)],
        "median": [float(v) for v in med],
        "max": [int(v) for v in a.max(axis=0)],
        "not_multiple_of_16": off,
        "suggested_input_size": [h, w],
        "suggested_crop": [hmin, wmin],
        "distinct": len({tuple(s) for s in sizes}),
    }


def _weights(pixels: np.ndarray) -> dict[str, list[float]]:
    from ..losses import class_weights

    if not pixels.any():
        return {}
    return {m: [round(float(v), 6) for v in class_weights(pixels, m)] for m in ("inverse", "median-frequency")}


def _class_rows(
    classes: ClassList, train: _Split, val: _Split | None, problems: list[Problem], images_dir: str
) -> list[dict]:
    total = max(1, int(train.pixels.sum()))
    rows = []
    for i, name in enumerate(classes.names):
        row = {
            "id": i,
            "name": name,
            "pixels": int(train.pixels[i]),
            "share": float(train.pixels[i]) / total,
            "images": int(train.images[i]),
        }
        if val is not None:
            row |= {"val_pixels": int(val.pixels[i]), "val_images": int(val.images[i])}
        rows.append(row)
    val_pixels = val.pixels.tolist() if val is not None else None
    problems += class_presence_problems(train.pixels.tolist(), val_pixels, classes.names, images_dir)
    return rows


def class_presence_problems(
    train_pixels: Sequence[int], val_pixels: Sequence[int] | None, names: Sequence[str], where: str = ""
) -> list[Problem]:
    """Classes in validation but absent from training (errors), and classes never present (warnings)."""
    out = []
    for i, px in enumerate(train_pixels):
        name = names[i] if i < len(names) else f"class_{i}"
        in_val = val_pixels is not None and val_pixels[i] > 0
        if in_val and not px:
            out.append(Problem(where, f"class {i} ({name}) is in validation but absent from training"))
        elif not px and not in_val:
            out.append(Problem(where, f"class {i} ({name}) never appears", "warning"))
    return out


def _duplicates(hashes: dict[str, list[tuple[str, str]]], problems: list[Problem]) -> list[dict[str, Any]]:
    out = []
    for entries in hashes.values():
        if len(entries) < 2:
            continue
        sides = {s for s, _ in entries}
        across = len(sides) > 1
        files = [f for _, f in entries]
        out.append({"files": files, "across_train_val": across})
        if across:
            problems.append(Problem(files[0], f"the same image is in training and validation: {', '.join(files)}"))
        else:
            problems.append(Problem(files[0], f"exact duplicate images: {', '.join(files)}", "warning"))
    return out


def check_data(
    images: str | Path,
    masks: str | Path,
    *,
    n_classes: int | None = None,
    ignore_index: int | None = None,
    mask_mode: str = "auto",
    classes: ClassList | None = None,
    label_map: LabelMap | None = None,
    val_images: str | Path | None = None,
    val_masks: str | Path | None = None,
    progress: Callable[[int], object] | None = None,
) -> CheckReport:
    """Check an image/mask folder pair (and optionally a validation pair); see the module docstring."""
    pairs, problems = pair_lenient(images, masks)
    val_pairs: list[tuple[Path, Path]] = []
    if val_images is not None and val_masks is not None:
        val_pairs, more = pair_lenient(val_images, val_masks)
        problems += more
    if not pairs:
        raise DataError(f"no image/mask pairs in {images} and {masks}; check the folders")
    if ignore_index is None and classes is not None:
        ignore_index = classes.ignore_index
    raws = _sample_masks(pairs)
    n_source = len(classes) if classes is not None else n_classes or _infer_n_classes(raws, ignore_index)
    source = classes or ClassList([f"class_{i}" for i in range(n_source)], ignore_index=ignore_index)
    if ignore_index != source.ignore_index:
        source = ClassList(source.names, source.colors, ignore_index)
    palette = source.colors if mask_mode == "palette" else None
    if mask_mode == "auto":
        try:
            mask_mode = _detect(raws, n_source, ignore_index)
        except DataError as e:
            if classes is None:
                raise
            mask_mode, palette = "palette", source.colors  # colour masks with a classes file's colours
            problems.append(Problem(str(masks), f"auto detection failed ({e}); used the class colours", "warning"))
    reason = _mode_reason(mask_mode, raws, n_source, ignore_index)
    mapped = apply_label_map(label_map, source) if label_map is not None else None
    checker = _Checker(mask_mode, n_source, source, mapped, palette)
    train = _Split(len(checker.classes))
    checker.run(pairs, train, "train", progress)
    val = _Split(len(checker.classes)) if val_pairs else None
    if val is not None:
        checker.run(val_pairs, val, "val", progress)
    problems += checker.problems
    rows = _class_rows(checker.classes, train, val, problems, str(images))
    duplicates = _duplicates(checker.hashes, problems)
    sizes = _size_summary(checker.sizes)
    if sizes.get("not_multiple_of_16"):
        problems.append(
            Problem(str(images), f"{sizes['not_multiple_of_16']} images are not multiples of 16 in size", "warning")
        )
    mean, std = _mean_std(checker)
    return CheckReport(
        pairs=len(pairs),
        val_pairs=len(val_pairs),
        problems=problems,
        classes=rows,
        sizes=sizes,
        mean=mean,
        std=std,
        duplicates=duplicates,
        mask_mode=mask_mode,
        mask_mode_reason=reason,
        formats=checker.formats,
        class_weights=_weights(train.pixels),
        ignore_index=checker.ignore,
    )


def _detect(raws: list[np.ndarray], n_classes: int, ignore: int | None) -> str:
    """The mask mode of the sampled masks; when they disagree (a bad mask among them), the most common one."""
    try:
        return detect_mask_mode(raws, n_classes, ignore_index=ignore)
    except DataError as first:
        modes = []
        for r in raws:
            try:
                modes.append(detect_mask_mode([r], n_classes, ignore_index=ignore))
            except DataError:
                pass  # this mask's values are reported when it is checked
        if not modes:
            raise first from None
        return max(set(modes), key=modes.count)


def _sample_masks(pairs: Sequence[tuple[Path, Path]]) -> list[np.ndarray]:
    picks = sorted({int(i) for i in np.linspace(0, len(pairs) - 1, num=min(len(pairs), DETECT_SAMPLES))})
    raws = []
    for i in picks:
        try:
            raws.append(read_mask(pairs[i][1]))
        except DataError:
            pass  # reported when the pair is checked
    if not raws:
        raise DataError(f"none of the masks sampled could be read (e.g. {pairs[picks[0]][1]}); check the masks folder")
    return raws


def _mean_std(checker: _Checker) -> tuple[list[float], list[float]]:
    if checker.sum is None or not checker.count:
        return [], []
    mean = checker.sum / checker.count
    var = np.maximum(checker.sumsq / checker.count - mean * mean, 0.0)  # type: ignore[operator]
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in np.sqrt(var)]


def format_report(report: CheckReport, limit: int = 20) -> str:
    """The table check-data prints."""
    lines = [
        f"pairs: {report.pairs} train" + (f", {report.val_pairs} validation" if report.val_pairs else ""),
        "images: " + ", ".join(f"{n} x {k}" for k, n in sorted(report.formats.items())),
        f"mask encoding: {report.mask_mode} ({report.mask_mode_reason})",
    ]
    s = report.sizes
    if s:
        lines.append(
            f"sizes (HxW): min {s['min'][0]}x{s['min'][1]}, median {s['median'][0]:g}x{s['median'][1]:g}, "
            f"max {s['max'][0]}x{s['max'][1]}; {s['not_multiple_of_16']} not multiples of 16; suggested "
            f"--input-size {s['suggested_input_size'][0]} {s['suggested_input_size'][1]} "
            f"--channels {len(report.mean) or 3} "
            f"(or crop {s['suggested_crop'][0]}x{s['suggested_crop'][1]})"
        )
    if report.mean:
        lines.append(f"per-channel mean {report.mean}, std {report.std} (values scaled to 0..1)")
    lines.append(
        f"{'id':>3}  {'class':<20} {'pixels':>12} {'share':>7} {'images':>7}" + ("  val px" * bool(report.val_pairs))
    )
    for c in report.classes:
        val = f"  {c['val_pixels']:>6}" if "val_pixels" in c else ""
        lines.append(f"{c['id']:>3}  {c['name'][:20]:<20} {c['pixels']:>12,} {c['share']:>7.2%} {c['images']:>7}{val}")
    if report.ignore_index is not None:
        lines.append(f"ignore index: {report.ignore_index}")
    if report.class_weights:
        for m, w in report.class_weights.items():
            lines.append(f"suggested class weights ({m}): {[round(v, 3) for v in w]}")
    lines.append(f"duplicates: {len(report.duplicates)} group(s)")
    errors = [p for p in report.problems if p.severity == "error"]
    warnings = [p for p in report.problems if p.severity != "error"]
    lines.append(f"problems: {len(errors)} error(s), {len(warnings)} warning(s)")
    for p in (errors + warnings)[:limit]:
        lines.append(f"  [{p.severity}] {p.file}: {p.problem}")
    if len(report.problems) > limit:
        lines.append(f"  ... and {len(report.problems) - limit} more (see --json)")
    lines.append("OK: no problem that would stop training" if report.ok else "FAILED: fix the errors above")
    return "\n".join(lines)


def write_report_json(report: CheckReport, path: str | Path) -> None:
    atomic_write_text(path, json.dumps(report.to_dict(), indent=2) + "\n")


def write_class_weights(report: CheckReport, path: str | Path, method: str = "median-frequency") -> None:
    """A JSON list of one weight per class, as ``train --class-weights FILE`` reads it."""
    if method not in report.class_weights:
        raise DataError(f"no {method} class weights: no class pixels were counted (see the problems listed)")
    atomic_write_text(path, json.dumps(report.class_weights[method]) + "\n")


def plot_classes(report: CheckReport, path: str | Path, colors: Sequence[Sequence[int]] | None = None) -> None:
    """A bar chart of each class's share of pixels (and of images containing it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c["name"] for c in report.classes]
    share = [100 * c["share"] for c in report.classes]
    imgs = [100 * c["images"] / max(1, report.pairs) for c in report.classes]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5))
    x = np.arange(len(names))
    face = [[v / 255 for v in c] for c in colors] if colors else None
    ax.bar(x - 0.2, share, 0.4, label="% of pixels", color=face, edgecolor="black")
    ax.bar(x + 0.2, imgs, 0.4, label="% of images", color="lightgray", edgecolor="black")
    ax.set_xticks(x, names, rotation=45 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel("%")
    ax.set_title(f"class distribution ({report.pairs} training pairs)")
    ax.set_ylim(0, 125)  # room for the legend above the bars
    ax.legend(ncol=2, loc="upper center")
    fig.tight_layout()
    tmp = Path(str(path) + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def check_and_write(
    images: str | Path,
    masks: str | Path,
    *,
    json_path: str | Path | None = None,
    plot_path: str | Path | None = None,
    weights_path: str | Path | None = None,
    weights_method: str = "median-frequency",
    classes_file: str | Path | None = None,
    label_map_file: str | Path | None = None,
    **options: Any,
) -> CheckReport:
    """``check_data`` plus the files check-data writes (JSON report, class-distribution plot, class weights)."""
    from .classes import read_classes
    from .labelmap import load_label_map

    classes = read_classes(classes_file) if classes_file is not None else None
    label_map = load_label_map(label_map_file) if label_map_file is not None else None
    report = check_data(images, masks, classes=classes, label_map=label_map, **options)
    if json_path is not None:
        write_report_json(report, json_path)
    if plot_path is not None:
        colors = None
        if classes is not None and label_map is None:
            colors = classes.colors
        plot_classes(report, plot_path, colors)
    if weights_path is not None:
        write_class_weights(report, weights_path, weights_method)
    return report
