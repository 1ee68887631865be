"""How a data set is divided: the seeded validation split, the sample order of an epoch on each rank,
and saved k-fold splits (splits.json, as nnU-Net's splits_final.json) with their fold subsets.

Both data sources (``loader.SegmentationData`` and ``stream.StreamingData``) split and order samples
with these functions, so the cached and the streamed copy of a data set see the same samples in the
same order.

A split file is a list with one ``{"train": [names], "val": [names]}`` per fold; names are image file
names without extension, as images pair with masks. The orchestration (one run per fold, the summary)
is ``unetkit.folds``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DataError
from ..fsio import atomic_write_text
from .folders import pair_files

SPLITS = "splits.json"


def split_indices(n: int, val_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, validation) indices of a seeded random split; at least one sample on each side."""
    n_val = max(1, round(n * val_fraction))
    if n_val >= n:
        raise DataError(
            f"cannot hold out {val_fraction:.0%} of {n} samples and keep any for training; "
            "lower --val-fraction or add data"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def shard_order(
    n: int, *, shuffle: bool, generator: torch.Generator | None, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The sample order of one epoch on one rank: a permutation drawn from ``generator`` (or 0..n-1), and
    with several ranks every world_size-th sample of it, padded as DistributedSampler pads, so that the
    ranks together see each sample once per epoch."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        per_rank = -(-n // world_size)
        order = torch.cat([order, order[: per_rank * world_size - n]])
        order = order[rank::world_size]
    return order


def make_splits(names: list[str], k: int, seed: int = 0) -> list[dict[str, list[str]]]:
    """Split ``names`` into ``k`` folds of near-equal size (seeded shuffle); each fold validates on one part."""
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    if len(names) < k:
        raise DataError(f"{len(names)} image/mask pairs cannot make {k} folds; use fewer --folds or add data")
    if len(set(names)) != len(names):
        raise DataError("image names must be unique to split them into folds")
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    parts = [sorted(names[i] for i in order[f::k]) for f in range(k)]
    return [
        {"train": sorted(n for j, part in enumerate(parts) if j != f for n in part), "val": parts[f]} for f in range(k)
    ]


def save_splits(path: str | Path, splits: list[dict[str, list[str]]]) -> None:
    atomic_write_text(path, json.dumps(splits, indent=2))


def load_splits(path: str | Path) -> list[dict[str, list[str]]]:
    """Read and check a splits.json: a list of {"train": [...], "val": [...]} with disjoint name lists."""
    path = Path(path)
    try:
        splits = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"split file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e}); delete it to make a new split") from None
    ok = isinstance(splits, list) and bool(splits)
    ok = ok and all(
        isinstance(s, dict)
        and set(s) == {"train", "val"}
        and all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in s.values())
        and not set(s["train"]) & set(s["val"])
        for s in splits
    )
    if not ok:
        raise ConfigError(f"{path} must be a list of {{'train': [names], 'val': [names]}} with disjoint lists")
    return splits


def pair_names(images: str | Path, masks: str | Path) -> list[str]:
    """The sample names of a folder pair, in the order the data loader reads them."""
    return [img.stem for img, _ in pair_files(images, masks)]


def fold_indices(names: list[str], split_file: str | Path, fold: int) -> tuple[list[int], list[int]]:
    """(train, val) positions in ``names`` of fold ``fold`` of ``split_file``; every name must be known."""
    splits = load_splits(split_file)
    if not 0 <= fold < len(splits):
        raise ConfigError(f"--fold {fold} is out of range: {split_file} has folds 0 to {len(splits) - 1}")
    where = {n: i for i, n in enumerate(names)}
    s = splits[fold]
    unknown = sorted(set(s["train"] + s["val"]) - set(where))
    if unknown:
        raise DataError(
            f"{split_file} names {len(unknown)} sample(s) not in the data (first: {unknown[0]}); the data folder "
            "changed since the split was made: delete splits.json to make a new one"
        )
    return [where[n] for n in s["train"]], [where[n] for n in s["val"]]


def split_data(data: Any, names: list[str], split_file: str | Path, fold: int) -> tuple[Any, Any]:
    """The (train, validation) subsets of ``data`` (cached or streamed) for one fold."""
    train, val = fold_indices(names, split_file, fold)
    return data.subset(train), data.subset(val)
