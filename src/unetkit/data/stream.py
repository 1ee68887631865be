"""Streaming data for sets larger than memory: decode on DataLoader workers, batch by batch.

``StreamingData`` has the interface ``fit()`` uses of the in-memory ``SegmentationData`` (``len``,
``batches``, ``split``, ``subset``, ``class_counts``, ``to``, ``nbytes``) and yields the same batches:
uint8 (B, C, H, W) images and int64 (B, H, W) masks, decoded with the same functions (``io.read_image``
/ ``read_mask``, ``masks.decode_mask``, ``preprocess.preprocess_image`` / ``resize_masks``), in the
same order for the same generator, sharded over ranks as ``SegmentationData.batches`` does (the
DistributedSampler rule: pad the shared permutation to a multiple of the world size, take every
world_size-th sample). Workers decode ahead of the training step (``prefetch_factor`` batches each,
a bounded queue) into pinned memory when the device is a GPU.

Unlike the in-memory cache, which reads and checks every file before training starts, a stream
reads a file when a batch needs it: a corrupt file stops training at that step, naming the file.

``choose_cache`` decides "memory" or "stream" for ``DataConfig.cache = "auto"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from ..preprocess import preprocess_image, resize_masks
from .folders import DETECT_SAMPLES, pair_files
from .io import read_image, read_mask
from .loader import split_indices
from .masks import MASK_MODES, decode_mask, detect_mask_mode, mask_dtype

Pair = tuple[Path, Path]
MEMORY_FRACTION = 0.5  # of the available host memory the "auto" cache may take (shared by local ranks)


def decode_pair(
    image_path: Path,
    mask_path: Path,
    input_size: tuple[int, int, int],
    *,
    n_classes: int,
    mask_mode: str,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
    resize: str = "bilinear",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pair -> (uint8 (C, H, W) image, (H, W) class ids) at the model's size; DataError on failure.

    The same steps as the in-memory loader (``folders.load_pairs``), so both modes see equal tensors.
    """
    h, w, c = (int(v) for v in input_size)
    image = read_image(image_path)
    raw = read_mask(mask_path)
    if image.shape[:2] != raw.shape[:2]:
        raise DataError(
            f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
            f"{raw.shape[1]}x{raw.shape[0]} (width x height); a mask must match its image's size: "
            "re-export the mask or remove the pair"
        )
    ids = decode_mask(raw, mask_mode, n_classes, palette=palette, ignore_index=ignore_index, path=mask_path)
    x = preprocess_image(image, (h, w, c), resize)[0]
    y = resize_masks(torch.from_numpy(ids)[None], (h, w))[0]
    return x, y


class PairDataset(Dataset):
    """A map-style Dataset over (image, mask) files; item i -> (image, mask, error message or "")."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        input_size: tuple[int, int, int],
        *,
        n_classes: int,
        mask_mode: str,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_index: int | None = None,
        resize: str = "bilinear",
    ):
        self.pairs = list(pairs)
        self.input_size = tuple(int(v) for v in input_size)
        self.kwargs: dict[str, Any] = dict(
            n_classes=n_classes, mask_mode=mask_mode, palette=palette, ignore_index=ignore_index, resize=resize
        )
        self.mask_torch_dtype = torch.uint8 if mask_dtype(n_classes, ignore_index) == np.uint8 else torch.int32

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, str]:
        # Errors travel as text so that the main process raises one clean DataError (an exception
        # raised in a worker would come back wrapped in the worker's traceback).
        try:
            x, y = decode_pair(Path(self.pairs[i][0]), Path(self.pairs[i][1]), self.input_size, **self.kwargs)
            return x, y.to(self.mask_torch_dtype), ""
        except DataError as e:
            h, w, c = self.input_size
            return torch.zeros((c, h, w), dtype=torch.uint8), torch.zeros((h, w), dtype=self.mask_torch_dtype), str(e)


def _collate(items: list[tuple[torch.Tensor, torch.Tensor, str]]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    images, masks, errors = zip(*items)
    if len({x.dtype for x in images}) > 1:  # 8-bit beside 16-bit images (or an error's placeholder)
        images = tuple(x.to(torch.int32) for x in images)
    return torch.stack(images), torch.stack(masks), [e for e in errors if e]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers decode one image each; threads per worker would oversubscribe


def shard_order(
    n: int, *, shuffle: bool, generator: torch.Generator | None, rank: int = 0, world_size: int = 1
) -> torch.Tensor:
    """The sample order of one epoch on one rank, exactly as ``SegmentationData.batches`` makes it."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    if world_size > 1:
        per_rank = -(-n // world_size)
        order = torch.cat([order, order[: per_rank * world_size - n]])  # pad as DistributedSampler
        order = order[rank::world_size]
    return order


@dataclass
class StreamingData:
    """Image/mask file pairs decoded on the fly by DataLoader workers; see the module docstring."""

    pairs: list[Pair]
    input_size: tuple[int, int, int]
    n_classes: int
    mask_mode: str
    palette: list[list[int]] | None = None
    ignore_index: int | None = None
    resize: str = "bilinear"
    num_workers: int = 2
    prefetch_factor: int = 2
    _dataset: PairDataset | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.mask_mode not in MASK_MODES:
            raise DataError(f"streaming needs a resolved mask mode ({', '.join(MASK_MODES)}), got {self.mask_mode!r}")
        self.pairs = [(Path(a), Path(b)) for a, b in self.pairs]
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def dataset(self) -> PairDataset:
        if self._dataset is None:
            self._dataset = PairDataset(
                self.pairs,
                self.input_size,
                n_classes=self.n_classes,
                mask_mode=self.mask_mode,
                palette=self.palette,
                ignore_index=self.ignore_index,
                resize=self.resize,
            )
        return self._dataset

    @property
    def nbytes(self) -> int:
        """What the in-memory cache of these pairs would take (uint8 images + masks)."""
        return cache_bytes(len(self), self.input_size, self.n_classes, self.ignore_index)

    def to(self, device: torch.device | str) -> StreamingData:
        """Itself: a stream moves each batch to the device as it yields it."""
        return self

    def subset(self, index: torch.Tensor | Sequence[int]) -> StreamingData:
        index = torch.as_tensor(index, dtype=torch.long).tolist()
        return replace(self, pairs=[self.pairs[i] for i in index])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[StreamingData, StreamingData]:
        """A seeded split choosing the same samples as ``SegmentationData.split`` on the same pairs."""
        train, val = split_indices(len(self), val_fraction, seed)
        return self.subset(train), self.subset(val)

    def class_counts(self, n_classes: int) -> torch.Tensor:
        """Pixels per class over the whole set (one decoding pass, for class weights)."""
        counts = torch.zeros(n_classes, dtype=torch.int64)
        for _, y in self.batches(64, device="cpu"):
            y = y.reshape(-1)
            counts += torch.bincount(y[(y >= 0) & (y < n_classes)], minlength=n_classes)[:n_classes]
        return counts

    def loader(self, batch_index: list[list[int]], device: torch.device) -> DataLoader:
        """A DataLoader yielding (images, masks, errors) for the given batches of sample indices."""
        workers = self.num_workers
        return DataLoader(
            self.dataset,
            batch_sampler=batch_index,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=device.type == "cuda",
            worker_init_fn=_worker_init if workers else None,
            prefetch_factor=self.prefetch_factor if workers else None,
        )

    def batches(
        self,
        batch_size: int,
        *,
        device: torch.device | str,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, int64 masks) batches on ``device``, as ``SegmentationData.batches`` does."""
        order = shard_order(len(self), shuffle=shuffle, generator=generator, rank=rank, world_size=world_size)
        index = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
        if drop_last and index and len(index[-1]) < batch_size:
            index.pop()
        if not index:
            return
        device = torch.device(device)
        for step, (x, y, errors) in enumerate(self.loader(index, device)):
            if errors:
                listed = "\n".join(f"  - {m}" for m in errors[:20])
                raise DataError(
                    f"{len(errors)} image/mask pair(s) of batch {step + 1} could not be read "
                    f"(streaming, mask mode {self.mask_mode}):\n{listed}\n"
                    "Fix or remove these files and run again."
                )
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()

    @classmethod
    def from_folders(
        cls,
        images: str | Path,
        masks: str | Path,
        input_size: tuple[int, int, int],
        *,
        n_classes: int,
        mask_mode: str = "auto",
        palette: list[list[int]] | None = None,
        ignore_index: int | None = None,
        resize: str = "bilinear",
        num_workers: int = 2,
        recursive: bool = False,
    ) -> tuple[StreamingData, str]:
        """Pair a folder of images with a folder of masks (decoding nothing yet); returns data and mask mode."""
        pairs = pair_files(images, masks, recursive=recursive)
        mode = resolve_mask_mode(pairs, mask_mode, n_classes=n_classes, palette=palette, ignore_index=ignore_index)
        return cls(pairs, input_size, n_classes, mode, palette, ignore_index, resize, num_workers), mode


def resolve_mask_mode(
    pairs: Sequence[Pair],
    mask_mode: str,
    *,
    n_classes: int,
    palette: Sequence[Sequence[int]] | None = None,
    ignore_index: int | None = None,
) -> str:
    """The mask mode to use: ``mask_mode`` itself, or for "auto" the one detected from a few masks."""
    if not pairs:
        raise DataError("no image/mask pairs to load")
    if mask_mode != "auto":
        if mask_mode not in MASK_MODES:
            raise DataError(f"unknown mask mode {mask_mode!r}; choose auto or one of {', '.join(MASK_MODES)}")
        if mask_mode == "palette" and not palette:
            raise DataError(
                "mask mode 'palette' needs a palette: pass --palette colours.json (JSON of class name -> [r, g, b])"
            )
        return mask_mode
    n = len(pairs)
    picks = sorted({int(i) for i in np.linspace(0, n - 1, num=min(n, DETECT_SAMPLES))})
    raws, paths = [], []
    for i in picks:
        try:
            raws.append(read_mask(pairs[i][1]))
            paths.append(pairs[i][1])
        except DataError:
            pass
    if not raws:
        bad = ", ".join(str(pairs[i][1]) for i in picks[:5])
        raise DataError(
            f"none of the masks looked at to detect the mask mode could be read ({bad}); "
            "fix or remove them, or check that the masks folder is right"
        )
    return detect_mask_mode(raws, n_classes, ignore_index=ignore_index, paths=paths)


def cache_bytes(count: int, input_size: Sequence[int], n_classes: int, ignore_index: int | None = None) -> int:
    """Bytes of the in-memory uint8 cache for ``count`` samples at ``input_size`` (H, W, C)."""
    h, w, c = (int(v) for v in input_size)
    return count * h * w * (c + mask_dtype(n_classes, ignore_index).itemsize)


def available_memory() -> int:
    """Host memory available now, in bytes (MemAvailable on Linux; total physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def memory_budget(local_world_size: int = 1) -> int:
    """What one process's cache may take: MEMORY_FRACTION of the available memory, shared by local ranks."""
    return int(available_memory() * MEMORY_FRACTION) // max(local_world_size, 1)


def choose_cache(mode: str, nbytes: int, budget: int | None = None, local_world_size: int = 1) -> str:
    """ "memory" or "stream": ``mode`` itself unless "auto", which streams when ``nbytes`` exceeds the budget."""
    if mode in ("memory", "stream"):
        return mode
    if mode != "auto":
        raise DataError(f"cache must be auto, memory or stream; got {mode!r}")
    budget = memory_budget(local_world_size) if budget is None else budget
    return "memory" if nbytes <= budget else "stream"


def load_streaming(
    config: Any,
    *,
    log: Callable[[str], None] = print,
    input_size: Sequence[int] | None = None,
    val_input_size: Sequence[int] | None = None,
) -> tuple[StreamingData, StreamingData | None, str]:
    """The streaming twin of ``train.load_data``: (train, validation or None, mask mode), nothing decoded.

    Samples are decoded at ``input_size`` (default: the model's; crop training passes the native size).
    """
    d, m = config.data, config.model
    size = tuple(input_size or m.input_size)
    palette = config.palette if d.mask_mode == "palette" else None
    common: dict[str, Any] = dict(
        n_classes=m.n_classes,
        mask_mode=d.mask_mode,
        palette=palette,
        ignore_index=d.ignore_index,
        resize=config.preprocess.resize,
        num_workers=d.num_workers,
        recursive=d.recursive,
    )
    if d.skip_bad:
        log(
            "note: --skip-bad checks the files while they are loaded into memory; when streaming, a bad "
            "file stops training at the step that reads it (--cache memory checks them all first)"
        )
    t0 = time.perf_counter()
    train, mode = StreamingData.from_folders(d.images, d.masks, size, **common)
    val = None
    if d.val_images and d.val_masks:
        val_size = tuple(val_input_size or size)
        val, _ = StreamingData.from_folders(d.val_images, d.val_masks, val_size, **(common | {"mask_mode": mode}))
    elif d.val_fraction:
        train, val = train.split(d.val_fraction, d.split_seed)
    total = len(train) + (len(val) if val else 0)
    log(
        f"streaming {total} image/mask pairs ({mode} masks; paired in {time.perf_counter() - t0:.1f}s), "
        f"decoded by {d.num_workers} DataLoader worker(s) per process"
    )
    return train, val, mode


def folder_cache_mode(config: Any, *, local_world_size: int = 1, log: Callable[[str], None] = print) -> str:
    """The cache mode for the folders in ``config.data``: counts the pairs for "auto" (decodes nothing)."""
    d, m = config.data, config.model
    if d.cache != "auto":
        return d.cache
    count = len(pair_files(d.images, d.masks, recursive=d.recursive))
    if d.val_images and d.val_masks:
        count += len(pair_files(d.val_images, d.val_masks, recursive=d.recursive))
    need = cache_bytes(count, m.input_size, m.n_classes, d.ignore_index)
    budget = memory_budget(local_world_size)
    mode = choose_cache("auto", need, budget)
    if mode == "stream":
        log(
            f"the uint8 cache would take {need / 2**30:.1f} GiB, over this process's budget of "
            f"{budget / 2**30:.1f} GiB; streaming from disk instead (force with --cache memory)"
        )
    return mode
