"""`unetkit demo`: the seed's U-Net on the built-in driving scenes, end to end, in a few minutes.

Two recipes (``unetkit.recipes``): ``strong`` (the default) is the seed's network with batch norm and
the strong training recipe, sized to finish in about five minutes on two CPU cores; ``seed`` is the
tutorial's recipe exactly, with the demo's original counts (640 scenes, 10 epochs). The settings and
the measurements behind them are in docs/accuracy.md (section "Demo") and benchmarks/demo_study.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from . import train as trainer
from .config import AugmentConfig, ModelConfig, RunConfig, TrainConfig
from .data import synthetic
from .data.io import read_image, read_mask
from .data.loader import SegmentationData
from .evaluate import evaluate
from .plots import side_by_side
from .predict import Predictor
from .recipes import apply_recipe
from .run import claim_run_folder, load_run

HEIGHT, WIDTH = 96, 128  # the seed's input size


@dataclass(frozen=True)
class DemoPlan:
    """How many scenes and epochs a demo recipe uses, and the training settings it changes."""

    train_count: int
    val_count: int
    epochs: int  # with a time budget: the most epochs, should the machine be fast enough
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields set after the recipe
    # seconds of training (TrainConfig.time_budget): the schedule follows the clock and the run ends on
    # time with its best weights, on a slow machine as on a fast one. None: ``epochs`` epochs, however long.
    time_budget: float | None = None
    scene_size: tuple[int, int] = (HEIGHT, WIDTH)  # the generated scenes' height and width
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields set after the recipe


# The defaults of ``unetkit demo --recipe NAME``; ``seed`` is the tutorial's recipe, unchanged.
PLANS: dict[str, DemoPlan] = {
    "seed": DemoPlan(train_count=640, val_count=128, epochs=10),
    "strong": DemoPlan(
        train_count=640,
        val_count=128,
        epochs=60,
        # the first 45% of the budget at 48x64 (the recipe weights rare classes up: pedestrians, signs, poles)
        train={"augment": {}, "batch_size": 4, "progressive": 0.45},
        time_budget=240.0,
    ),
}


def demo_config(
    recipe: str = "strong",
    *,
    epochs: int | None = None,
    seed: int = 0,
    model: dict[str, Any] | None = None,
    **train: Any,
) -> RunConfig:
    """The demo's RunConfig: the seed's network (n_filters 32, depth 5) at 96x128 for the 13 scene classes,
    the recipe, then the plan's settings, then ``model`` (ModelConfig fields, e.g. ``{"dropout": 0.0}``) and
    ``train`` (TrainConfig fields, e.g. ``batch_size=4``). Giving ``epochs`` trains that many epochs instead
    of the plan's time budget."""

    plan = PLANS[recipe] if recipe in PLANS else PLANS["strong"]
    crop = train.get("crop", plan.train.get("crop"))
    size = (HEIGHT, WIDTH) if crop is None else tuple(crop)  # crop training: the model's input is the crop
    config = RunConfig(
        model=ModelConfig(input_size=(*size, 3), n_classes=synthetic.N_CLASSES),
        train=TrainConfig(seed=seed),
        class_names=list(synthetic.CLASS_NAMES),
        palette=[list(c) for c in synthetic.PALETTE],
    )
    config = replace(config, data=replace(config.data, mask_mode="index"))
    config = apply_recipe(config, recipe)  # raises ConfigError naming the choices for an unknown recipe
    settings = {**plan.train, **train}
    if isinstance(settings.get("augment"), dict):
        settings["augment"] = AugmentConfig(**settings["augment"])
    if epochs is None and "time_budget" not in settings:  # --epochs N: N epochs, no budget
        settings["time_budget"] = plan.time_budget
    config = replace(config, model=replace(config.model, **{**plan.model, **(model or {})}))
    return replace(config, train=replace(config.train, epochs=epochs or plan.epochs, **settings))


def example_scenes(masks: list[np.ndarray], classes: tuple[int, ...], k: int = 4) -> list[int]:
    """Indices of ``k`` scenes to show: those where the rarest of ``classes`` covers the most pixels
    (ties by index), so that the picture shows vehicles and pedestrians when the test set has them."""
    score = [min(int((m == c).sum()) for c in classes) for m in masks]
    return sorted(sorted(range(len(masks)), key=lambda i: (-score[i], i))[:k])


def run_demo(
    out: str | Path = "demo-run",
    *,
    recipe: str = "strong",
    train_count: int | None = None,
    val_count: int | None = None,
    epochs: int | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    scene_size: tuple[int, int] | None = None,
    **train: Any,
) -> dict:
    """Train on ``train_count`` scenes, pick the best epoch on ``val_count`` others, test on ``val_count``
    scenes of another seed. Counts, epochs and the time budget default to the recipe's plan (``PLANS``);
    ``epochs`` trains that many epochs with no budget, ``time_budget=S`` (seconds) sets another one.
    ``scene_size=(H, W)`` generates larger scenes (train on crops of them with ``crop=(h, w)``; measured
    worse in the 240-s budget, docs/accuracy.md). An ``out`` that already holds a run is refused unless
    ``overwrite``."""
    out = Path(out)
    if not overwrite:
        claim_run_folder(out, create=False)
    config = demo_config(recipe, epochs=epochs, seed=seed, **train)
    plan = PLANS[recipe]
    train_count = plan.train_count if train_count is None else train_count
    val_count = plan.val_count if val_count is None else val_count
    size = plan.scene_size if scene_size is None else scene_size
    train_data, val_data, test_dir = _scenes(out, train_count, val_count, seed, size, log)
    log(f"recipe {recipe}" + (" (the tutorial's, exactly)" if recipe == "seed" else ""))
    log(config.describe())
    t1 = time.perf_counter()
    result = trainer.fit(
        config, out, train_data=train_data, val_data=val_data, progress=progress, log=log, overwrite=overwrite
    )
    train_seconds = time.perf_counter() - t1
    model = load_run(out).model  # the best epoch's weights, as the run folder holds them
    predictor = Predictor(model, config)
    report = evaluate(predictor, test_dir / "image", test_dir / "mask")
    report.save_json(out / "test_metrics.json")
    log(report.table())
    _examples(predictor, test_dir, val_count, config, out / "examples.png")
    m = report.metrics
    iou = dict(zip(config.class_names or [], m.iou))
    log(
        f"\ntest mIoU {m.mean_iou:.4f}, pixel accuracy {m.pixel_accuracy:.4f} on {val_count} held-out "
        f"scenes after {len(result.history)} epochs ({train_seconds:.0f}s of training); "
        f"IoU vehicle {iou['vehicle']:.3f}, pedestrian {iou['pedestrian']:.3f}"
    )
    _next_steps(out, test_dir, recipe, log)
    return {
        "test_miou": m.mean_iou,
        "train_seconds": train_seconds,
        "epochs": len(result.history),
        "train_count": train_count,
        "metrics": m,
        "history": result.history,
        "config": config,
    }


def _scenes(
    out: Path, train_count: int, val_count: int, seed: int, size: tuple[int, int], log: Callable[[str], None]
) -> tuple[SegmentationData, SegmentationData, Path]:
    """Training and validation scenes in memory (one seed), test scenes written under ``out`` (seed + 1)."""
    t0 = time.perf_counter()
    h, w = size
    images, masks = synthetic.make_dataset(train_count + val_count, h, w, seed=seed)
    test_dir = synthetic.write_dataset(out / "test-scenes", val_count, h, w, seed=seed + 1)
    log(
        f"generated {train_count + val_count} training/validation scenes and {val_count} test scenes "
        f"({h}x{w}, {synthetic.N_CLASSES} classes) in {time.perf_counter() - t0:.1f}s"
    )
    data = SegmentationData.from_arrays(images, masks, (h, w, 3), n_classes=synthetic.N_CLASSES)
    train_data = data.subset(list(range(train_count)))
    val_data = data.subset(list(range(train_count, train_count + val_count)))
    return train_data, val_data, test_dir


def _next_steps(out: Path, test_dir: Path, recipe: str, log: Callable[[str], None]) -> None:
    """Where the results are and the commands to run next."""
    log(f"run folder:  {out}/  (weights.safetensors, config.json, metrics.csv, curves.png)")
    log(f"pictures:    {out}/examples.png (input | truth | prediction), {out}/curves.png")
    log(f"test scenes: {test_dir}/image, {test_dir}/mask; metrics in {out}/test_metrics.json")
    log(f"next:        unetkit predict {out} {test_dir}/image --out {out}/predictions --masks {test_dir}/mask")
    if recipe != "seed":
        log(f"             unetkit demo --recipe seed --out {out}-seed   (the tutorial's recipe, for comparison)")
    log("             unetkit train --images DIR --masks DIR --n-classes N --out my-run   (your own data)")


def _examples(predictor: Predictor, test_dir: Path, count: int, config: RunConfig, path: Path) -> None:
    """examples.png: four test scenes with vehicles and pedestrians, as input | truth | prediction."""

    names = [f"scene_{i:05d}.png" for i in range(count)]
    truths = [read_mask(test_dir / "mask" / name) for name in names]
    rows: list[tuple[np.ndarray, ...]] = []
    for i in example_scenes(truths, (synthetic.PERSON, synthetic.VEHICLE)):
        image = read_image(test_dir / "image" / names[i])
        rows.append((image, truths[i], predictor.predict(image)))
    side_by_side(rows, ["Input Image", "True Mask", "Predicted Mask"], config.palette or [], path)
