"""``load_data``: the folders named in a run's config -> training and validation sources, one path for both
caches. ``--cache memory`` decodes everything up front into ``SegmentationData``, ``--cache stream``
pairs the files into ``StreamingData``; the mask mode, label map, validation split and fold subsets
are applied the same way to either.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image

from .. import distributed
from ..config import MaskMode, RunConfig
from ..errors import ConfigError
from ..preprocess import normalization_stats
from .check import class_presence_problems
from .folders import list_images
from .io import read_image
from .loader import SegmentationData, class_presence, presence_report
from .source import SegmentationSource
from .splits import pair_names, split_data
from .stream import StreamingData, folder_cache_mode

Log = Callable[[str], None]
Reader = Callable[[str, str, tuple[int, int, int], MaskMode], tuple[SegmentationSource, MaskMode]]


def load_data(config: RunConfig, *, log: Log = print) -> tuple[SegmentationSource, SegmentationSource | None, MaskMode]:
    """Read the train (and validation) folders named in ``config.data``, cached or streamed (``data.cache``).

    Returns the training data, the validation data (or None) and the mask mode used (detected
    when the config says "auto", so that evaluation later reads masks the same way).
    """
    d = config.data
    if not d.images or not d.masks:
        raise ConfigError("no training data: give --images DIR and --masks DIR")
    if d.label_map and d.mask_mode == "palette":
        raise ConfigError("--label-map works on class ids; with colour masks import them first (datasets import)")
    size = cache_size(config, d.images, log)  # the model's input size, or the native size for crops
    val_size = cache_size(config, d.val_images, log) if d.val_images else size
    local = distributed.env_info().local_world_size
    stream = folder_cache_mode(config, local_world_size=local, log=log) == "stream"
    if stream and d.skip_bad:
        log(
            "note: --skip-bad checks the files while they are loaded into memory; when streaming, a bad "
            "file stops training at the step that reads it (--cache memory checks them all first)"
        )
    read = _reader(config, stream, log)
    t0 = time.perf_counter()
    train, mode = read(d.images, d.masks, size, d.mask_mode)
    val = None
    if d.val_images and d.val_masks:
        val, _ = read(d.val_images, d.val_masks, val_size, mode)
    elif d.val_fraction:
        train, val = train.split(d.val_fraction, d.split_seed)
    train, val = fold_split(config, train, val)
    total = len(train) + (len(val) if val is not None else 0)
    seconds = time.perf_counter() - t0
    if isinstance(train, SegmentationData):
        _report_cache(config, train, val, total, mode, seconds, log)
    else:
        log(
            f"streaming {total} image/mask pairs ({mode} masks; paired in {seconds:.1f}s), "
            f"decoded by {d.num_workers} DataLoader worker(s) per process"
        )
    return train, val, mode


def _reader(config: RunConfig, stream: bool, log: Log) -> Reader:
    """Folder pair -> (source, mask mode). Streamed: files paired now, decoded batch by batch; in memory:
    every file decoded now, bad files reported (or skipped with --skip-bad) at once."""
    d = config.data
    common: dict[str, Any] = dict(
        n_classes=config.model.n_classes,
        palette=config.palette if d.mask_mode == "palette" else None,
        ignore_index=d.ignore_index,
        resize=config.preprocess.resize,
        recursive=d.recursive,
        label_map=d.label_map,
    )
    if stream:
        cls: type[SegmentationData] | type[StreamingData] = StreamingData
        common["num_workers"] = d.num_workers
    else:
        cls = SegmentationData
        common |= dict(skip_bad=d.skip_bad, log=log)

    def read(
        images: str, masks: str, size: tuple[int, int, int], mode: MaskMode
    ) -> tuple[SegmentationSource, MaskMode]:
        data, used = cls.from_folders(images, masks, size, mask_mode=mode, **common)
        return data, cast(MaskMode, used)  # folders.resolve_mask_mode checked it: one of MASK_MODES, never "auto"

    return read


def _report_cache(
    config: RunConfig,
    train: SegmentationData,
    val: SegmentationSource | None,
    total: int,
    mode: str,
    seconds: float,
    log: Log,
) -> None:
    """What was read into memory, then how the training masks' pixels spread over the classes."""
    d = config.data
    nbytes = train.nbytes + (val.nbytes if val is not None else 0)
    log(f"read {total} image/mask pairs ({mode} masks) in {seconds:.1f}s, {nbytes / 2**20:.1f} MiB cached")
    for line in presence_report(
        *class_presence(train.masks, config.model.n_classes, d.ignore_index),
        class_names=config.class_names,
        ignore_index=d.ignore_index,
        mask_mode=mode,
    ):
        log(line)


def cache_size(config: RunConfig, images: str | Path, log: Log = print) -> tuple[int, int, int]:
    """The size a folder's images are cached at: the model's input size, or for crop training the
    images' own (native) size, the most common one when they differ (others are resized to it)."""
    if config.train.crop is None:
        return tuple(config.model.input_size)  # type: ignore[return-value]
    sizes: Counter[tuple[int, int]] = Counter()
    for file in list_images(images):
        try:
            with Image.open(file) as im:
                sizes[(im.height, im.width)] += 1
        except OSError:  # not readable by PIL (e.g. some TIFFs): decode it fully
            sizes[tuple(read_image(file).shape[:2])] += 1
    if not sizes:
        raise ConfigError(f"no images in {images}")
    (h, w), count = sizes.most_common(1)[0]
    if len(sizes) > 1:
        log(f"{images}: {sum(sizes.values()) - count} image(s) not {h}x{w} are resized to it for crop training")
    return h, w, config.model.input_size[2]


def fold_split(
    config: RunConfig, train: SegmentationSource, val: SegmentationSource | None
) -> tuple[SegmentationSource, SegmentationSource | None]:
    """For one fold of a k-fold run (``data.split_file``): that fold's training and validation subsets."""
    d = config.data
    if d.split_file is None or d.fold is None:
        return train, val
    return split_data(train, pair_names(d.images, d.masks), d.split_file, d.fold)  # type: ignore[arg-type]


def cheap_checks(config: RunConfig, train: Any, val: Any, log: Log) -> None:
    """check-data's checks that cost nothing once the data is loaded (pairing, sizes and values were checked
    while loading): classes never present, and classes in validation but absent from training."""
    if not hasattr(train, "class_counts"):
        return
    n = config.model.n_classes
    val_counts = val.class_counts(n).tolist() if val is not None and hasattr(val, "class_counts") else None
    for p in class_presence_problems(train.class_counts(n).tolist(), val_counts, config.class_names or []):
        if p.problem.endswith("never appears"):
            continue  # load_data's class presence report says so once, with the likely fix
        log(f"warning: {p.problem} (run `unetkit check-data` for the full report)")


def with_normalization(config: RunConfig, data: Any, log: Log = print) -> RunConfig:
    """``config`` with the normalisation statistics of the training data (``--normalize``), unless already set."""
    p = config.preprocess
    have = {"scale": p.max_value, "mean-std": p.mean, "percentile": p.low}[p.normalize]
    if have:
        return config
    if hasattr(data, "images"):
        images = data.images
    else:  # streaming: the first batches (up to 1024 images) stand for the set
        chunks = []
        for x, _ in data.batches(64, device="cpu"):
            chunks.append(x)
            if sum(len(c) for c in chunks) >= 1024:
                break
        images = torch.cat(chunks)
    stats = normalization_stats(images.cpu(), p.normalize, config.train.seed)
    if p.normalize != "scale":
        log(f"normalisation {p.normalize} from the training set: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return replace(config, preprocess=replace(p, **stats))
