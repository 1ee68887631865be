"""The seed's central claim, measured: U-Net against the FCN baseline on the same data, budget and recipe.

Both networks share the seed's encoder; FCN restores full size with a single transposed convolution
at the end, U-Net with one upsampling block per level and skip connections. ``compare`` trains each
with ``fit`` (the one training loop) on the same cached data and recipe, scores both on the same
validation set at the model's input size (pixel accuracy, mIoU, per-class IoU and boundary F1
within a few pixels, where lost detail shows first), and writes a table (markdown and JSON) and a
picture with rows of input | truth | FCN | U-Net.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import ModelName, RunConfig
from .data.source import SegmentationSource
from .device import resolve_device
from .errors import ConfigError
from .fsio import atomic_write_text
from .metrics import BoundaryF1, ConfusionMatrix
from .model import count_parameters
from .plots import side_by_side
from .preprocess import to_float
from .train import TrainResult, fit, load_data, validate

MODELS: tuple[ModelName, ...] = ("fcn", "unet")
TITLES = {"fcn": "FCN", "unet": "U-Net"}


@dataclass
class ModelScore:
    """One model's scores on the validation set and what its training cost."""

    name: str
    pixel_accuracy: float
    mean_iou: float
    iou: list[float | None]
    boundary_f1: float
    parameters: int
    epochs: int
    train_seconds: float
    best_epoch: int
    mean_accuracy: float = 0.0  # mAcc, from the same confusion matrix
    fw_iou: float = 0.0

    def to_dict(self, class_names: list[str]) -> dict[str, Any]:
        return {
            "model": self.name,
            "pixel_accuracy": self.pixel_accuracy,
            "mean_accuracy": self.mean_accuracy,
            "mean_iou": self.mean_iou,
            "fw_iou": self.fw_iou,
            "boundary_f1": self.boundary_f1,
            "parameters": self.parameters,
            "epochs": self.epochs,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "per_class_iou": dict(zip(class_names, self.iou)),
        }


@dataclass
class Comparison:
    """The study's result: one score per model, plus the settings that produced it."""

    scores: list[ModelScore]
    class_names: list[str]
    tolerance: int
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "boundary_tolerance_px": self.tolerance,
            "models": [s.to_dict(self.class_names) for s in self.scores],
        }

    def markdown(self) -> str:
        """The table: one column per model, rows for the summary metrics and each class's IoU."""
        head = "| metric | " + " | ".join(TITLES.get(s.name, s.name) for s in self.scores) + " |"
        lines = [head, "|" + " --- |" * (len(self.scores) + 1)]

        def row(label: str, values: list[str]) -> None:
            lines.append(f"| {label} | " + " | ".join(values) + " |")

        row("aAcc (pixel accuracy)", [f"{s.pixel_accuracy:.4f}" for s in self.scores])
        row("mAcc (class average)", [f"{s.mean_accuracy:.4f}" for s in self.scores])
        row("mean IoU", [f"{s.mean_iou:.4f}" for s in self.scores])
        row("fwIoU", [f"{s.fw_iou:.4f}" for s in self.scores])
        row(f"boundary F1 ({self.tolerance} px)", [f"{s.boundary_f1:.4f}" for s in self.scores])
        for c, name in enumerate(self.class_names):
            row(f"IoU {name}", ["-" if s.iou[c] is None else f"{s.iou[c]:.4f}" for s in self.scores])
        row("parameters", [f"{s.parameters:,}" for s in self.scores])
        row("epochs (best)", [f"{s.epochs} ({s.best_epoch})" for s in self.scores])
        row("training time", [f"{s.train_seconds:.0f} s" for s in self.scores])
        return "\n".join(lines)


def score_model(
    model: nn.Module,
    data: SegmentationSource,
    config: RunConfig,
    *,
    device: torch.device | str = "cpu",
    tolerance: int = 2,
    batch_size: int = 16,
) -> tuple[ConfusionMatrix, BoundaryF1]:
    """Confusion matrix and boundary F1 of ``model`` on cached data, at the model's input size, in fp32.

    The loop is fit's validation (``train.validate``): the scores are computed as training reported them.
    """
    scored = validate(model, data, config, device=device, batch_size=batch_size, boundary_tolerance=tolerance)
    assert scored.boundary is not None  # asked for with boundary_tolerance
    return scored.matrix, scored.boundary


def predict_masks(model: nn.Module, images: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """(N, H, W) class ids for (N, C, H, W) uint8 images already at the model's size."""
    model.eval()
    with torch.no_grad():
        return model(to_float(images.to(device))).argmax(1).cpu().numpy().astype(np.uint8)


def compare(
    config: RunConfig,
    out: str | Path,
    *,
    train_data: SegmentationSource | None = None,
    val_data: SegmentationSource | None = None,
    models: tuple[ModelName, ...] = MODELS,
    tolerance: int = 2,
    examples: int = 4,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    overwrite: bool = False,
) -> Comparison:
    """Train each of ``models`` with ``config``'s recipe on the same data and write the study to ``out``.

    ``out/<model>/`` holds each run folder; ``out/compare.md``, ``out/compare.json`` and
    ``out/compare.png`` (input | truth | FCN | U-Net) hold the result. Validation data is required:
    give ``val_data``, validation folders, or ``data.val_fraction`` in the config. Run folders that
    already exist are refused unless ``overwrite``.
    """
    log = log or (lambda _msg: None)
    out = Path(out)
    if not overwrite:
        from .run import claim_run_folder

        for name in models:
            claim_run_folder(out / name, create=False)
    if train_data is None:
        train_data, val_data, mask_mode = load_data(config, log=log)
        # the mask mode detected from the files: read them the same way in both runs
        config = replace(config, data=replace(config.data, mask_mode=mask_mode))
    elif val_data is None and config.data.val_fraction:
        train_data, val_data = train_data.split(config.data.val_fraction, config.data.split_seed)
    if val_data is None or len(val_data) == 0:
        raise ConfigError("compare needs validation data: give --val-images/--val-masks or --val-fraction")
    device = resolve_device(config.train.device)
    scores: list[ModelScore] = []
    trained: dict[str, nn.Module] = {}
    for name in models:
        cfg = replace(config, model=replace(config.model, name=name))
        log(f"--- {TITLES.get(name, name)}: {len(train_data)} training images, {cfg.train.epochs} epochs")
        t0 = time.perf_counter()
        result = fit(
            cfg, out / name, train_data=train_data, val_data=val_data, progress=progress, log=log, overwrite=overwrite
        )
        seconds = time.perf_counter() - t0
        trained[name] = result.model.to(device)
        scores.append(_model_score(name, trained[name], val_data, cfg, result, seconds, device, tolerance))
    comparison = Comparison(
        scores,
        list(config.class_names or []),
        tolerance,
        settings={
            "train_images": len(train_data),
            "val_images": len(val_data),
            "input_size": list(config.model.input_size),
            "n_filters": config.model.n_filters,
            "recipe": config.train.recipe,
            "epochs": config.train.epochs,
            "batch_size": config.train.batch_size,
            "device": str(device),
        },
    )
    _write(comparison, trained, val_data, config, out, examples, device)
    log(comparison.markdown())
    log(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {out / 'compare.png'}")
    return comparison


def _model_score(
    name: str,
    model: nn.Module,
    val_data: SegmentationSource,
    config: RunConfig,
    result: TrainResult,
    seconds: float,
    device: torch.device,
    tolerance: int,
) -> ModelScore:
    """One trained model's row of the study: its scores on the validation set and what training cost."""
    cm, bf = score_model(model, val_data, config, device=device, tolerance=tolerance)
    m = cm.compute()
    best_epoch = max(result.history, key=lambda r: r.get("val_miou") or -1.0)["epoch"]
    return ModelScore(
        name,
        m.pixel_accuracy,
        m.mean_iou,
        [None if math.isnan(v) else v for v in m.iou],
        bf.compute(),
        count_parameters(model),
        len(result.history),
        round(seconds, 1),
        best_epoch,
        m.mean_accuracy,
        m.fw_iou,
    )


def _write(
    comparison: Comparison,
    models: dict[str, nn.Module],
    val_data: SegmentationSource,
    config: RunConfig,
    out: Path,
    examples: int,
    device: torch.device,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.md", comparison.markdown() + "\n")
    atomic_write_text(out / "compare.json", json.dumps(comparison.to_dict(), indent=2, allow_nan=False))
    k = min(examples, len(val_data))
    if k == 0:
        return
    index = torch.linspace(0, len(val_data) - 1, k).round().long().unique()
    x, y = next(iter(val_data.subset(index).batches(len(index), device="cpu")))  # cached or streamed alike
    preds = {name: predict_masks(model, x, device) for name, model in models.items()}
    images = x.permute(0, 2, 3, 1).numpy()
    truths = y.numpy()
    order = [name for name in MODELS if name in preds] + [name for name in preds if name not in MODELS]
    rows = [(images[i], truths[i], *(preds[name][i] for name in order)) for i in range(len(index))]
    titles = ["Input Image", "True Mask", *(TITLES.get(name, name) for name in order)]
    side_by_side(rows, titles, config.palette or [], out / "compare.png")
