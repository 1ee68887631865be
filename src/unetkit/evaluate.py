"""evaluate(): a run (or any Predictor) on a folder pair, at each mask's original size.

One confusion matrix over the whole set; pixel accuracy, IoU and Dice derive from it.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.folders import pair_files
from .data.io import read_image, read_mask
from .data.masks import decode_mask, detect_mask_mode
from .errors import DataError
from .fsio import atomic_write_text
from .metrics import ConfusionMatrix, SegmentationMetrics
from .predict import Predictor


@dataclass
class EvalReport:
    metrics: SegmentationMetrics
    class_names: list[str]
    n_images: int
    mask_mode: str

    def to_dict(self) -> dict[str, Any]:
        return self.metrics.to_dict(self.class_names) | {"n_images": self.n_images, "mask_mode": self.mask_mode}

    def table(self) -> str:
        return self.metrics.format_table(self.class_names)

    def save_json(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False))


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
    model: str | Path | Predictor,
    images: str | Path,
    masks: str | Path,
    *,
    mask_mode: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    label_map: str | Path | None = None,
    classes: str | Path | None = None,
) -> EvalReport:
    """Evaluate a run folder (or a Predictor) on images/masks paired by file stem.

    Masks hold the source ids of the run's label map, if it was trained with one (``label_map`` FILE
    instead: that map, over the source classes of ``classes`` FILE, else ``class_0..``).
    """
    predictor = model if isinstance(model, Predictor) else Predictor.from_run(model, device=device)
    config = predictor.config
    n = config.model.n_classes
    ignore = config.data.ignore_index
    pairs = pair_files(images, masks)
    lut = _lookup_table(config, label_map, classes)
    n_source = len(lut) if lut else n
    mode = mask_mode or config.data.mask_mode
    if mode == "auto":
        mode = detect_mask_mode([read_mask(m) for _, m in pairs[:8]], n_source, ignore_index=ignore)
    palette = config.palette if mode == "palette" else None
    cm = ConfusionMatrix(n, ignore)

    def load(pair: tuple[Path, Path]) -> tuple[np.ndarray, np.ndarray]:
        img_path, mask_path = pair
        image = read_image(img_path)
        mask = decode_mask(read_mask(mask_path), mode, n_source, palette=palette, ignore_index=ignore, path=mask_path)
        if lut:
            from .data.labelmap import apply_lut

            mask = apply_lut(mask, lut, ignore, ignore, mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise DataError(
                f"{img_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]}; image and mask must have the same size"
            )
        return image, mask

    with ThreadPoolExecutor(max_workers=2) as pool:
        for start in range(0, len(pairs), batch_size):
            loaded = list(pool.map(load, pairs[start : start + batch_size]))
            preds = predictor.predict_batch([im for im, _ in loaded])
            for pred, (_, mask) in zip(preds, loaded):
                cm.update(torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64)))
    return EvalReport(cm.compute(), predictor.class_names, len(pairs), mode)
