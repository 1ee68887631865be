"""Recipe study: train the same network under named recipe variants and record validation mIoU and time.

Why: the `strong` recipe in ``unetkit.recipes`` was chosen from runs like these; the script keeps
them reproducible. Each variant is the seed's defaults, then a recipe, then overrides, trained with
``unetkit.fit`` (no second loop) on the built-in scenes or on a folder pair such as
``../shared/data/membrane``.

    python benchmarks/recipe_study.py synthetic --variants seed strong strong:batch_norm=false --epochs 8
    python benchmarks/recipe_study.py membrane --size 256 --variants seed strong --epochs 40
    python benchmarks/recipe_study.py membrane --folds 5 --variants seed strong --epochs 25 --n-filters 16

``--folds K`` trains each variant as K-fold cross-validation with ``unetkit.folds.train_folds`` on a
folder pair (membrane, or ``folders --images DIR --masks DIR``): the split is made once, seeded, in
``WORK/splits.json`` and every variant trains on exactly that split, so differences between variants
are not differences between splits. Each line then holds every fold's best validation mIoU, aAcc
and mAcc, their mean and standard deviation, and the CPU seconds the variant took.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from unetkit.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from unetkit.data.loader import SegmentationData
from unetkit.folds import SPLITS, prepare_splits, train_folds
from unetkit.recipes import apply_recipe
from unetkit.run import METRICS, read_metrics
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


def variant_config(name: str, size: tuple[int, int], channels: int, n_classes: int, a: argparse.Namespace) -> RunConfig:
    """The seed's defaults, then the variant's recipe, then its overrides (epochs ``a.epochs`` unless overridden).

    An ``epochs=N`` override compares variants at equal cost rather than equal epochs (e.g. progressive
    resizing, whose half-size epochs cost about a quarter).
    """
    recipe, t_over, m_over = parse_variant(name)
    model = ModelConfig(input_size=(*size, channels), n_filters=a.n_filters, n_classes=n_classes)
    config = RunConfig(
        model=model,
        data=DataConfig(mask_mode="index"),
        train=TrainConfig(epochs=a.epochs, device="cpu", compile="off", seed=a.seed),
    )
    config = apply_recipe(config, recipe)
    return replace(
        config, train=replace(config.train, **({"epochs": a.epochs} | t_over)), model=replace(config.model, **m_over)
    )


def folder_source(a: argparse.Namespace) -> tuple[Path, Path, int, int, str]:
    """(images, masks, n_classes, channels, mask mode) of the folder pair ``--folds`` trains on."""
    if a.data == "membrane":  # --images/--masks point elsewhere, e.g. from a git worktree
        return a.images or MEMBRANE / "image", a.masks or MEMBRANE / "label", 2, 1, "binary"
    if a.data == "folders" and a.images and a.masks:
        return a.images, a.masks, a.n_classes, a.channels, a.mask_mode
    raise SystemExit("--folds trains on folders: use 'membrane', or 'folders --images DIR --masks DIR --n-classes N'")


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def run_folds(name: str, config: RunConfig, work: Path, k: int) -> dict[str, Any]:
    """One variant as k-fold cross-validation under WORK/<variant>, on the split in WORK/splits.json."""
    out = work / _slug(name)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copy(work / SPLITS, out / SPLITS)  # the very split every variant trains on
    wall, cpu = time.perf_counter(), time.process_time()
    summary = train_folds(config, out, k, log=lambda line: print(line, file=sys.stderr), progress=False, overwrite=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    folds = []
    for f in summary["folds"]:
        curve = [
            round(float(r["val_miou"]), 4)
            for r in read_metrics(out / f["run"] / METRICS)
            if r.get("val_miou") is not None
        ]
        folds.append(
            {key: f.get(key) for key in ("fold", "epoch", "val_miou", "val_accuracy", "val_mean_accuracy")}
            | {"curve": curve}
        )
    row: dict[str, Any] = {"folds": folds}
    for key, label in (("val_miou", "miou"), ("val_accuracy", "aacc"), ("val_mean_accuracy", "macc")):
        if key in summary:
            row[f"mean_{label}"] = round(summary[key]["mean"], 4)
            row[f"std_{label}"] = round(summary[key]["std"], 4)
    return row | {"cpu_seconds": round(cpu, 1), "seconds": round(wall, 1)}


def study_folds(a: argparse.Namespace, size: tuple[int, int]) -> None:
    """Every variant as ``a.folds``-fold cross-validation on one seeded split; one JSON line each."""
    images, masks, n_classes, channels, mode = folder_source(a)
    work = a.work or Path("runs") / f"recipe_study_{a.data}_{a.folds}fold"
    for name in a.variants:
        config = variant_config(name, size, channels, n_classes, a)
        config = replace(
            config,
            data=replace(config.data, images=str(images), masks=str(masks), mask_mode=mode, split_seed=a.seed),
        )
        config = replace(config, data=replace(config.data, cache="memory", num_workers=0))
        splits = prepare_splits(config, work, a.folds, a.seed)  # made once, then read and checked
        row = {
            "data": a.data,
            "size": list(size),
            "variant": name,
            "epochs": config.train.epochs,
            "n_filters": a.n_filters,
            "k": a.folds,
            "split_seed": a.seed,
            "train": [len(s["train"]) for s in splits],
            "val": [len(s["val"]) for s in splits],
            "threads": a.threads,
        } | run_folds(name, config, work, a.folds)
        print(json.dumps(row), flush=True)
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


def study_split(a: argparse.Namespace, size: tuple[int, int]) -> None:
    """Every variant on one seeded 80/20 split; one JSON line each with its validation curve."""
    train, val, n_classes, channels = load(a.data, size, a.count, a.seed)
    for name in a.variants:
        config = variant_config(name, size, channels, n_classes, a)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", choices=("synthetic", "membrane", "folders"))
    p.add_argument("--variants", nargs="+", default=["seed", "strong"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n-filters", type=int, default=32)
    p.add_argument("--size", type=int, nargs=2, default=None, help="H W (default 96 128; membrane 256 256)")
    p.add_argument("--count", type=int, default=400, help="synthetic scenes (80 %% train, 20 %% validation)")
    p.add_argument("--seed", type=int, default=0, help="training seed, and the seed of the split")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--folds", type=int, default=0, help="K: K-fold cross-validation per variant (0: one 80/20 split)")
    p.add_argument("--work", type=Path, default=None, help="--folds: the folder of splits.json and the fold runs")
    p.add_argument("--images", type=Path, default=None, help="'folders' (or membrane elsewhere): images")
    p.add_argument("--masks", type=Path, default=None, help="'folders' (or membrane elsewhere): masks")
    p.add_argument("--n-classes", type=int, default=2, help="'folders': classes in the masks")
    p.add_argument("--channels", type=int, default=3, help="'folders': image channels")
    p.add_argument("--mask-mode", default="auto", help="'folders': how masks are read (as unetkit train)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/recipe_study.jsonl"))
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    size = tuple(a.size) if a.size else ((256, 256) if a.data == "membrane" else (96, 128))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.folds:
        study_folds(a, size)
    elif a.data == "folders":
        raise SystemExit("'folders' needs --folds K (the single-split study reads synthetic or membrane)")
    else:
        study_split(a, size)


if __name__ == "__main__":
    main()
