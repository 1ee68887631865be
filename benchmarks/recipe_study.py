"""Recipe study: train the same network under named recipe variants and record validation mIoU and time.

Why: the `strong` recipe in ``unetkit.recipes`` was chosen from runs like these; the script keeps
them reproducible. Each variant is the seed's defaults, then a recipe, then overrides, trained with
``unetkit.fit`` (no second loop) on the built-in scenes or on a folder pair such as
``../shared/data/membrane``.

    python benchmarks/recipe_study.py synthetic --variants seed strong strong:batch_norm=false --epochs 8
    python benchmarks/recipe_study.py membrane --size 256 --variants seed strong --epochs 40
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from unetkit.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from unetkit.data.loader import SegmentationData
from unetkit.recipes import apply_recipe
from unetkit.train import fit

MEMBRANE = Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane" / "train"

MODEL_KEYS = {"name", "batch_norm", "dropout", "depth", "n_filters"}
AUGMENTS = {
    "none": AugmentConfig(),
    "flip": AugmentConfig(hflip=True),
    "flipscale": AugmentConfig(hflip=True, scale=(0.75, 1.5)),
    "mild": AugmentConfig(hflip=True, scale=(0.8, 1.25), brightness=0.1, contrast=0.1, saturation=0.1),
}


def parse_variant(spec: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """'RECIPE[:key=value,...]' -> (recipe, train overrides, model overrides).

    e.g. ``strong``, ``strong:batch_norm=false``, ``strong:lr=5e-3,batch_size=32,augment=none``.
    """
    recipe, _, rest = spec.partition(":")
    train: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        value: Any
        if key == "augment":
            value = AUGMENTS[raw]
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError:
                    value = raw
        (model if key in MODEL_KEYS else train)[key] = value
    return recipe, train, model


def load(
    name: str, size: tuple[int, int], count: int, seed: int
) -> tuple[SegmentationData, SegmentationData, int, int]:
    """(train, val, n_classes, channels) for 'synthetic' or 'membrane'."""
    if name == "synthetic":
        from unetkit.data import synthetic

        images, masks = synthetic.make_dataset(count, *size, seed=seed)
        data = SegmentationData.from_arrays(images, masks, (*size, 3), n_classes=synthetic.N_CLASSES)
        train, val = data.split(0.2, 0)
        return train, val, synthetic.N_CLASSES, 3
    data, _ = SegmentationData.from_folders(
        MEMBRANE / "image", MEMBRANE / "label", (*size, 1), n_classes=2, mask_mode="binary"
    )
    train, val = data.split(0.2, 0)
    return train, val, 2, 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", choices=("synthetic", "membrane"))
    p.add_argument("--variants", nargs="+", default=["seed", "strong"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n-filters", type=int, default=32)
    p.add_argument("--size", type=int, nargs=2, default=None, help="H W (default 96 128; membrane 256 256)")
    p.add_argument("--count", type=int, default=400, help="synthetic scenes (80 %% train, 20 %% validation)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe_study.jsonl"))
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    size = tuple(a.size) if a.size else ((256, 256) if a.data == "membrane" else (96, 128))
    train, val, n_classes, channels = load(a.data, size, a.count, a.seed)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for name in a.variants:
        recipe, t_over, m_over = parse_variant(name)
        model = ModelConfig(input_size=(*size, channels), n_filters=a.n_filters, n_classes=n_classes)
        config = RunConfig(
            model=model,
            data=DataConfig(mask_mode="index"),
            train=TrainConfig(epochs=a.epochs, device="cpu", compile="off", seed=a.seed),
        )
        config = apply_recipe(config, recipe)
        config = replace(
            config, train=replace(config.train, epochs=a.epochs, **t_over), model=replace(config.model, **m_over)
        )
        t0 = time.perf_counter()
        result = fit(config, None, train_data=train, val_data=val, progress=False, log=None)
        seconds = time.perf_counter() - t0
        curve = [round(r["val_miou"], 4) for r in result.history]
        row = {
            "data": a.data,
            "size": list(size),
            "variant": name,
            "epochs": a.epochs,
            "n_filters": a.n_filters,
            "train": len(train),
            "val": len(val),
            "best_val_miou": max(curve),
            "final_val_miou": curve[-1],
            "seconds": round(seconds, 1),
            "curve": curve,
        }
        print(json.dumps(row), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
