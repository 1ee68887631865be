"""Streaming data for sets larger than memory: decode on DataLoader workers, batch by batch.

``StreamingData`` is a ``source.SegmentationSource``, as the in-memory ``SegmentationData`` is, and
yields the same batches: uint8 (B, C, H, W) images and int64 (B, H, W) masks, decoded by the same
``folders.decode_pair`` (label maps included), in the same order for the same generator
(``splits.shard_order``: the DistributedSampler rule over ranks). Workers decode ahead of the
training step (``prefetch_factor`` batches each, a bounded queue) into pinned memory when the device
is a GPU.

Unlike the in-memory cache, which reads and checks every file before training starts, a stream
reads a file when a batch needs it: a corrupt file stops training at that step, naming the file.

``choose_cache`` decides "memory" or "stream" for ``DataConfig.cache = "auto"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import DataError
from .folders import decode_pair, pair_files, resolve_mask_mode, source_classes
from .masks import MASK_MODES, mask_dtype, mask_tensor_dtype
from .source import SegmentationSource
from .splits import shard_order

Pair = tuple[Path, Path]
MEMORY_FRACTION = 0.5  # of the available host memory the "auto" cache may take (shared by local ranks)


class PairDataset(Dataset):
    """A map-style Dataset over (image, mask) files; item i -> (image, mask, error message or "").

    ``options`` are ``folders.decode_pair``'s keywords (``n_classes``, ``mask_mode``, ``palette``,
    ``ignore_index``, ``resize``, ``label_map``).
    """

    def __init__(self, pairs: Sequence[Pair], input_size: tuple[int, int, int], **options: Any):
        self.pairs = list(pairs)
        self.input_size: tuple[int, int, int] = tuple(int(v) for v in input_size)  # type: ignore[assignment]
        self.kwargs: dict[str, Any] = options
        self.mask_torch_dtype = mask_tensor_dtype(options["n_classes"], options.get("ignore_index"))

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


@dataclass
class StreamingData(SegmentationSource):
    """Image/mask file pairs decoded on the fly by DataLoader workers; see the module docstring.

    ``n_classes`` is the model's; with a ``label_map`` (source id -> class id) the mask files hold
    source ids, mapped as they are decoded, exactly as the in-memory cache maps them.
    """

    pairs: list[Pair]
    input_size: tuple[int, int, int]
    n_classes: int
    mask_mode: str
    palette: list[list[int]] | None = None
    ignore_index: int | None = None
    resize: str = "bilinear"
    num_workers: int = 2
    prefetch_factor: int = 2
    label_map: list[int] | None = None
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
                label_map=self.label_map,
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
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, int64 masks) batches on ``device``, in ``splits.shard_order``'s order."""
        order = shard_order(len(self), shuffle=shuffle, generator=generator, rank=rank, world_size=world_size)
        index = [order[s : s + batch_size].tolist() for s in range(0, len(order), batch_size)]
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
        label_map: Sequence[int] | None = None,
    ) -> tuple[StreamingData, str]:
        """Pair a folder of images with a folder of masks (decoding nothing yet); returns data and mask mode."""
        pairs = pair_files(images, masks, recursive=recursive)
        n_source = source_classes(n_classes, label_map)
        mode = resolve_mask_mode(pairs, mask_mode, n_classes=n_source, palette=palette, ignore_index=ignore_index)
        lut = list(label_map) if label_map else None
        data = cls(pairs, input_size, n_classes, mode, palette, ignore_index, resize, num_workers, label_map=lut)
        return data, mode


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
