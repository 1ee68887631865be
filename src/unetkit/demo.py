"""`unetkit demo`: the seed's U-Net on the built-in driving scenes, end to end, in a few minutes."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from . import train as trainer
from .config import ModelConfig, RunConfig, TrainConfig
from .data import synthetic
from .data.io import read_image, read_mask
from .data.loader import SegmentationData
from .evaluate import evaluate
from .plots import side_by_side
from .predict import Predictor
from .run import claim_run_folder


def run_demo(
    out: str | Path = "demo-run",
    *,
    train_count: int = 640,
    val_count: int = 128,
    epochs: int = 10,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict:
    """Train on ``train_count`` scenes, pick the best epoch on ``val_count`` others, test on a third set.

    An ``out`` that already holds a run is refused unless ``overwrite``.
    """
    out = Path(out)
    if not overwrite:
        claim_run_folder(out, create=False)
    h, w = 96, 128
    t0 = time.perf_counter()
    images, masks = synthetic.make_dataset(train_count + val_count, h, w, seed=seed)
    test_dir = synthetic.write_dataset(out / "test-scenes", val_count, h, w, seed=seed + 1)
    log(
        f"generated {train_count + val_count} training/validation scenes and {val_count} test scenes "
        f"({h}x{w}, {synthetic.N_CLASSES} classes) in {time.perf_counter() - t0:.1f}s"
    )
    n = synthetic.N_CLASSES
    data = SegmentationData.from_arrays(images, masks, (h, w, 3), n_classes=n)
    train_data = data.subset(range(train_count))
    val_data = data.subset(range(train_count, train_count + val_count))
    config = RunConfig(
        model=ModelConfig(n_classes=n),
        train=TrainConfig(epochs=epochs, seed=seed),
        class_names=list(synthetic.CLASS_NAMES),
        palette=[list(c) for c in synthetic.PALETTE],
    )
    config.data.mask_mode = "index"
    log(config.describe())
    t1 = time.perf_counter()
    result = trainer.fit(
        config, out, train_data=train_data, val_data=val_data, progress=progress, log=log, overwrite=overwrite
    )
    train_seconds = time.perf_counter() - t1

    predictor = Predictor(result.model, config)
    report = evaluate(predictor, test_dir / "image", test_dir / "mask")
    report.save_json(out / "test_metrics.json")
    log(report.table())
    rows = []
    for i in range(4):
        image = read_image(test_dir / "image" / f"scene_{i:05d}.png")
        truth = read_mask(test_dir / "mask" / f"scene_{i:05d}.png")
        rows.append((image, truth, predictor.predict(image)))
    side_by_side(rows, ["Input Image", "True Mask", "Predicted Mask"], config.palette or [], out / "examples.png")
    miou = report.metrics.mean_iou
    log(
        f"\ntest mIoU {miou:.4f}, pixel accuracy {report.metrics.pixel_accuracy:.4f} on {val_count} held-out "
        f"scenes after {len(result.history)} epochs ({train_seconds:.0f}s of training)"
    )
    log(f"run folder:  {out}/  (weights.safetensors, config.json, metrics.csv, curves.png)")
    log(f"pictures:    {out}/examples.png (input | truth | prediction), {out}/curves.png")
    log(f"test scenes: {test_dir}/image, {test_dir}/mask; metrics in {out}/test_metrics.json")
    log(f"next:        unetkit predict {out} {test_dir}/image --out {out}/predictions --masks {test_dir}/mask")
    log("             unetkit train --images DIR --masks DIR --n-classes N --out my-run   (your own data)")
    return {"test_miou": miou, "train_seconds": train_seconds, "epochs": len(result.history)}
