"""k-fold cross-validation: a saved, seeded split (splits.json) and one run per fold under one folder.

```
OUT/
  splits.json     [{"train": [names], "val": [names]}, ...] one entry per fold (nnU-Net's splits_final.json)
  fold_0/ ...     an ordinary run folder per fold (its config.json names splits.json and its fold)
  folds.json      each fold's best scores, their mean and standard deviation
```
Names are the image file names without extension, as images pair with masks. The split is made
once and saved: training a fold later (``--fold k``) or on another machine reads the same file, so
every fold sees exactly the samples it saw before.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .config import RunConfig
from .data.splits import SPLITS, fold_indices, load_splits, make_splits, pair_names, save_splits, split_data
from .errors import ConfigError, DataError, RunError
from .fsio import atomic_write_text
from .run import METRICS, read_metrics
from .train import fit

SUMMARY = "folds.json"
__all__ = [
    "SPLITS",
    "SUMMARY",
    "fold_indices",
    "format_summary",
    "load_splits",
    "make_splits",
    "pair_names",
    "prepare_splits",
    "save_splits",
    "split_data",
    "summarize",
    "train_folds",
]


def prepare_splits(config: RunConfig, out: Path, k: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """OUT/splits.json for ``k`` folds: made (seeded) when absent, else read and checked against the data."""
    d = config.data
    if not d.images or not d.masks:
        raise ConfigError("--folds needs --images DIR and --masks DIR")
    if d.val_images or d.val_fraction:
        raise ConfigError("--folds makes its own validation sets; leave out --val-images/--val-masks/--val-fraction")
    names = pair_names(d.images, d.masks)
    path = out / SPLITS
    if path.exists():
        splits = load_splits(path)
        if len(splits) != k:
            raise ConfigError(f"{path} has {len(splits)} folds, not {k}; use --folds {len(splits)} or another --out")
        known = {n for s in splits for n in s["train"] + s["val"]}
        if known != set(names):
            raise DataError(
                f"{path} was made for other data ({len(known)} names, the folders hold {len(names)}); "
                "use another --out or delete it"
            )
        return splits
    splits = make_splits(names, k, seed)
    save_splits(path, splits)
    return splits


def fold_config(config: RunConfig, out: Path, fold: int) -> RunConfig:
    """The config of one fold's run: the same recipe, data read through OUT/splits.json."""
    return replace(config, data=replace(config.data, split_file=str(out / SPLITS), fold=fold))


def train_folds(
    config: RunConfig,
    out: str | Path,
    k: int,
    *,
    fold: int | None = None,
    seed: int | None = None,
    log: Callable[[str], None] = print,
    **fit_kwargs: Any,
) -> dict[str, Any]:
    """Train every fold (or only ``fold``) into OUT/fold_<i>; returns (and writes) the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    splits = prepare_splits(config, out, k, config.data.split_seed if seed is None else seed)
    if fold is not None and not 0 <= fold < k:
        raise ConfigError(f"--fold {fold} is out of range: folds are 0 to {k - 1}")
    for i in [fold] if fold is not None else range(k):
        log(f"fold {i + 1} of {k}: {len(splits[i]['train'])} training, {len(splits[i]['val'])} validation images")
        fit(fold_config(config, out, i), out / f"fold_{i}", log=log, **fit_kwargs)
    summary = summarize(out)
    log(format_summary(summary))
    return summary


def _best(path: Path) -> dict[str, Any] | None:
    rows = [r for r in read_metrics(path / METRICS) if r.get("val_miou") is not None]
    if not rows:
        return None
    best = max(rows, key=lambda r: float(r["val_miou"]))  # type: ignore[arg-type]
    return {k: best.get(k) for k in ("epoch", "val_miou", "val_accuracy", "val_mean_accuracy", "val_loss")}


def summarize(out: str | Path) -> dict[str, Any]:
    """Each trained fold's best validation scores and their mean and standard deviation; writes folds.json.

    The scores of a fold are those of its best-mIoU epoch: mIoU, aAcc (``val_accuracy``), mAcc
    (``val_mean_accuracy``, absent from runs made before it was logged) and the validation loss.
    """
    out = Path(out)
    splits = load_splits(out / SPLITS)
    folds: list[dict[str, Any]] = []
    for i in range(len(splits)):
        best = _best(out / f"fold_{i}")
        if best is not None:
            folds.append({"fold": i, "run": f"fold_{i}"} | best)
    summary: dict[str, Any] = {"k": len(splits), "trained": len(folds), "folds": folds}
    for key in ("val_miou", "val_accuracy", "val_mean_accuracy"):
        values = [float(f[key]) for f in folds if f.get(key) is not None]
        if values:
            summary[key] = {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            }
    if not folds:
        raise RunError(f"no fold under {out} has finished an epoch with validation yet")
    atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2, allow_nan=False))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """The per-fold table and the mean +- standard deviation line."""
    lines = [f"{'fold':>4}  {'best epoch':>10}  {'val mIoU':>8}  {'val acc':>8}"]
    for f in summary["folds"]:
        acc = f"{f['val_accuracy']:.4f}" if f.get("val_accuracy") is not None else "-"
        lines.append(f"{f['fold']:>4}  {f['epoch']:>10}  {f['val_miou']:>8.4f}  {acc:>8}")
    m = summary.get("val_miou")
    if m is not None and not math.isnan(m["mean"]):
        a = summary.get("val_accuracy") or {"mean": float("nan"), "std": float("nan")}
        lines.append(
            f"mean over {summary['trained']} of {summary['k']} folds: val mIoU {m['mean']:.4f} +- {m['std']:.4f}, "
            f"val acc {a['mean']:.4f} +- {a['std']:.4f}"
        )
    return "\n".join(lines)
