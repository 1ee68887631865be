"""evaluate(): a run (or any Predictor) on a folder pair, at each mask's original size.

One confusion matrix over the whole set; aAcc, mAcc, mIoU, fwIoU and the per-class IoU, Dice,
precision and recall all derive from it (see ``unetkit.metrics``). Each image also gets its own
small matrix, so the report can list the images from the worst to the best (bad labels, hard cases).
"""

from __future__ import annotations

import csv
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.folders import pair_files
from .data.io import read_image, read_mask
from .data.masks import decode_mask, detect_mask_mode
from .metrics import ConfusionMatrix, SegmentationMetrics, metrics_from_matrix
from .predict import PredictorBase
from .run import atomic_write_text


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
    per_image: list[ImageScore] = field(default_factory=list)
    tta: str | None = None

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"n_images": self.n_images, "mask_mode": self.mask_mode}
        if self.tta:
            extra["tta"] = self.tta
        return self.metrics.to_dict(self.class_names) | extra

    def table(self) -> str:
        return self.metrics.format_table(self.class_names)

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


def evaluate(
    model: str | Path | PredictorBase,
    images: str | Path,
    masks: str | Path,
    *,
    mask_mode: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    tta: str | None = None,
) -> EvalReport:
    """Evaluate a run folder (or a Predictor) on images/masks paired by file stem.

    ``tta`` (e.g. ``"flip"`` or ``"flip,scales=0.75,1,1.25"``, see ``unetkit.tta``) averages the logits
    of the augmented views before the argmax.
    """
    if isinstance(model, PredictorBase):
        predictor = model
    else:
        from .predict import Predictor

        predictor = Predictor.from_run(model, device=device)
    if tta is not None:
        predictor.set_tta(tta)
    config = predictor.config
    n = config.model.n_classes
    ignore = config.data.ignore_index
    pairs = pair_files(images, masks)
    mode = mask_mode or config.data.mask_mode
    if mode == "auto":
        mode = detect_mask_mode([read_mask(m) for _, m in pairs[:8]], n)
    palette = config.palette if mode == "palette" else None
    cm = ConfusionMatrix(n, ignore)
    scores: list[ImageScore] = []

    def load(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = pair
        image = read_image(img_path)
        mask = decode_mask(read_mask(mask_path), mode, n, palette=palette, ignore_index=ignore, path=mask_path)
        if image.shape[:2] != mask.shape[:2]:
            from .errors import DataError

            raise DataError(
                f"{img_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; image and mask must have the same size"
            )
        return image, mask

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            loaded = list(pool.map(load, chunk))
            preds = predictor.predict_batch([im for im, _ in loaded])
            for (img_path, _), pred, (_, mask) in zip(chunk, preds, loaded):
                image_cm, score = _image_score(img_path.name, pred, mask, n, ignore)
                cm.merge(image_cm)
                scores.append(score)
    spec = predictor.tta.describe() if predictor.tta is not None else None
    return EvalReport(cm.compute(), predictor.class_names, len(pairs), mode, scores, spec)
