"""evaluate(): a run (or any Predictor) on a folder pair, at each mask's original size.

One confusion matrix over the whole set; aAcc, mAcc, mIoU, fwIoU and the per-class IoU, Dice,
precision and recall all derive from it (see ``unetkit.metrics``). Each image also gets its own
small matrix, so the report can list the images from the worst to the best (bad labels, hard cases).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.folders import pair_files
from .data.io import read_image, read_mask
from .data.masks import RANGE_FIX, decode_mask, detect_mask_mode
from .errors import DataError
from .fsio import atomic_write_text
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_matrix
from .postprocess import PostProcess
from .predict import PredictorBase
from .predict_files import agreement_note, load_predictor

_EVAL_FIX = (
    "the run was trained for its classes (n_classes and ignore index in its config.json): check that "
    "--masks is the right folder, or choose another --mask-mode"
)


@dataclass
class ImageScore:
    """One image's own scores (its confusion matrix alone, same absent-class rule as the set)."""

    name: str
    pixel_accuracy: float
    mean_iou: float
    pixels: int  # counted (not ignored) pixels


@dataclass
class EvalReport:
    metrics: SegmentationMetrics
    class_names: list[str]
    n_images: int
    mask_mode: str
    precision: str = "fp32"
    # with post-processing: the raw model's metrics above are followed by one row per option and all together
    postprocess: list[dict[str, Any]] = field(default_factory=list)
    agreement: str | None = None
    per_image: list[ImageScore] = field(default_factory=list)
    tta: str | None = None

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the classes present (the headline figure), as ``metrics.mean_iou``."""
        return self.metrics.mean_iou

    @property
    def pixel_accuracy(self) -> float:
        return self.metrics.pixel_accuracy

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"n_images": self.n_images, "mask_mode": self.mask_mode, "precision": self.precision}
        if self.postprocess:
            extra["postprocess"] = self.postprocess
        if self.agreement:
            extra["agreement"] = self.agreement
        if self.tta:
            extra["tta"] = self.tta
        return self.metrics.to_dict(self.class_names) | extra

    def table(self) -> str:
        text = self.metrics.format_table(self.class_names)
        if self.postprocess:
            rows = [f"{'post-processing':<28} {'mIoU':>7} {'change':>8} {'pixels changed':>15}"]
            rows += [
                f"{r['name']:<28} {r['mean_iou']:>7.4f} {r['mean_iou_change']:>+8.4f} {r['pixels_changed']:>15.3%}"
                for r in self.postprocess
            ]
            text += "\n\n" + "\n".join(rows)
        if self.agreement:
            text += "\n" + self.agreement
        return text

    def save_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))

    def worst_first(self) -> list[ImageScore]:
        """The images by mIoU, then pixel accuracy, lowest first."""
        return sorted(self.per_image, key=lambda s: (s.mean_iou, s.pixel_accuracy, s.name))

    def save_per_image(self, path: str | Path) -> None:
        """CSV of each image's pixel accuracy and mIoU, worst first."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "pixel_accuracy", "mean_iou", "pixels"])
        for s in self.worst_first():
            writer.writerow([s.name, f"{s.pixel_accuracy:.6f}", f"{s.mean_iou:.6f}", s.pixels])
        atomic_write_text(path, buf.getvalue())

    def save_confusion(self, path: str | Path) -> Path:
        """The row-normalised confusion matrix as a picture at ``path``, and its counts as CSV beside it.

        Returns the CSV's path (``path`` with the suffix .csv): rows are the true class, columns the
        predicted one, cells raw pixel counts.
        """
        from .plots import plot_confusion

        path = Path(path)
        csv_path = path.with_suffix(".csv")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["truth \\ prediction", *self.class_names])
        for name, row in zip(self.class_names, self.metrics.matrix):
            writer.writerow([name, *(int(v) for v in row)])
        atomic_write_text(csv_path, buf.getvalue())
        plot_confusion(self.metrics.matrix, self.class_names, path)
        return csv_path


def _image_score(name: str, pred: np.ndarray, mask: np.ndarray, n: int, ignore: int | None) -> tuple[Any, ImageScore]:
    cm = ConfusionMatrix(n, ignore)
    cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
    m = metrics_from_matrix(cm.matrix.numpy())
    return cm, ImageScore(name, m.pixel_accuracy, m.mean_iou, int(m.matrix.sum()))


def _lookup_table(config: Any, label_map: str | Path | None, classes: str | Path | None) -> list[int] | None:
    """The source-id lookup table evaluation applies to masks: the given map's, else the run's."""
    if label_map is None:
        return config.data.label_map
    from .data.classes import ClassList, read_classes
    from .data.labelmap import apply_label_map, load_label_map
    from .errors import DataError

    n = config.model.n_classes
    size = len(config.data.label_map or []) or n
    source = read_classes(classes) if classes else ClassList([f"class_{i}" for i in range(size)])
    mapped = apply_label_map(load_label_map(label_map), source)
    if len(mapped.classes) != n:
        raise DataError(f"label map {label_map} gives {len(mapped.classes)} classes but the run has {n}")
    return mapped.lut


def evaluate(
    model: str | Path | PredictorBase,
    images: str | Path,
    masks: str | Path,
    *,
    mask_mode: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    precision: str | None = None,
    postprocess: PostProcess | None = None,
    check_agreement: int = 0,
    label_map: str | Path | None = None,
    classes: str | Path | None = None,
    tta: str | None = None,
) -> EvalReport:
    """Evaluate a run folder, an ensemble folder, an .onnx file (or a predictor) on images/masks paired by file stem.

    ``precision``: fp32 (default), bf16 or int8 (see ``open_predictor``). With ``postprocess`` the metrics
    are those of the raw model, and ``report.postprocess`` says what each option (and all of them) changes.
    ``check_agreement`` N: the share of pixels of the first N images where the masks agree with fp32.
    Masks hold the source ids of the run's label map, if it was trained with one (``label_map`` FILE
    instead: that map, over the source classes of ``classes`` FILE, else ``class_0..``).
    ``tta`` (e.g. ``"flip"`` or ``"flip,scales=0.75,1,1.25"``, see ``unetkit.tta``) averages the logits
    of the augmented views before the argmax. ``report.per_image`` scores each image alone (raw masks).
    """
    if isinstance(model, PredictorBase):
        predictor = model
    else:
        predictor = load_predictor(model, device=device, precision=precision)  # run, ensemble or .onnx
    if tta is not None:
        predictor.set_tta(tta)
    config = predictor.config
    n = config.model.n_classes
    ignore = config.data.ignore_index
    pairs = pair_files(images, masks)
    lut = _lookup_table(config, label_map, classes)
    n_source = len(lut) if lut else n
    mode = mask_mode or config.data.mask_mode
    if mode == "auto":
        sample = [m for _, m in pairs[:8]]
        mode = detect_mask_mode(
            [read_mask(m) for m in sample], n_source, ignore_index=ignore, paths=sample, evaluating=True
        )
    palette = config.palette if mode == "palette" else None
    steps = postprocess.steps() if postprocess is not None else []
    variants = [("raw", None), *steps] + ([("all together", postprocess)] if len(steps) > 1 else [])
    load = _loader(mode, n_source, palette, ignore, lut)
    metrics, changed, total, scores = _score(predictor, pairs, load, variants, n, ignore, batch_size)
    rows = [
        {
            "name": name,
            "mean_iou": m.mean_iou,
            "mean_iou_change": m.mean_iou - metrics[0].mean_iou,
            "pixels_changed": changed[i] / max(total, 1),
        }
        for i, ((name, _), m) in enumerate(zip(variants, metrics))
    ]
    report = EvalReport(metrics[0], predictor.class_names, len(pairs), mode, predictor.precision, rows if steps else [])
    report.per_image = scores
    report.tta = predictor.tta.describe() if predictor.tta is not None else None
    if check_agreement and not isinstance(model, PredictorBase):
        report.agreement = _agreement(model, predictor, [p for p, _ in pairs[:check_agreement]], device)
    return report


def _loader(
    mode: str, n_source: int, palette: Any, ignore: int | None, lut: list[int] | None
) -> Callable[[tuple[Path, Path]], tuple[np.ndarray, np.ndarray]]:
    """Read an (image, mask) pair as evaluation needs it: mask decoded, mapped, same size as the image."""

    def load(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = pair
        image = read_image(img_path)
        try:
            mask = decode_mask(
                read_mask(mask_path), mode, n_source, palette=palette, ignore_index=ignore, path=mask_path
            )
        except DataError as e:  # the classes are the run's: the advice on --n-classes does not apply here
            raise DataError(str(e).replace(RANGE_FIX, _EVAL_FIX)) from None
        if lut:
            from .data.labelmap import apply_lut

            mask = apply_lut(mask, lut, ignore, ignore, mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(
                f"{img_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; image and mask must have the same size"
            )
        return image, mask

    return load


def _score(
    predictor: PredictorBase,
    pairs: list[tuple[Path, Path]],
    load: Callable[[tuple[Path, Path]], tuple[np.ndarray, np.ndarray]],
    variants: list[tuple[str, PostProcess | None]],
    n: int,
    ignore: int | None,
    batch_size: int,
) -> tuple[list[SegmentationMetrics], list[int], int, list[ImageScore]]:
    """One confusion matrix per variant (raw, each post-processing) over the whole set; pixels each changed;
    each image's own scores (raw masks)."""
    cms = [ConfusionMatrix(n, ignore) for _ in variants]
    scores: list[ImageScore] = []
    changed = [0] * len(variants)
    total = 0
    saved, predictor.postprocess = predictor.postprocess, None  # raw masks; each variant applied here
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start : start + batch_size]
                loaded = list(pool.map(load, chunk))
                preds = predictor.predict_batch([im for im, _ in loaded], batch_size=batch_size)
                for (img_path, _), pred, (_, mask) in zip(chunk, preds, loaded):
                    scores.append(_image_score(img_path.name, pred, mask, n, ignore)[1])
                    truth = torch.from_numpy(mask.astype(np.int64))
                    total += pred.size
                    for i, (_, post) in enumerate(variants):
                        out = pred if post is None else post(pred)
                        changed[i] += int((out != pred).sum()) if post is not None else 0
                        cms[i].update(torch.from_numpy(out.astype(np.int64)), truth)
    finally:
        predictor.postprocess = saved
    return [cm.compute() for cm in cms], changed, total, scores


def _agreement(model: str | Path, predictor: PredictorBase, files: list[Path], device: str) -> str:
    return agreement_note(model, predictor, files, device)
