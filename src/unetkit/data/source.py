"""``SegmentationSource``: what training and evaluation need of a data set, cached or streamed.

Two classes have it: ``loader.SegmentationData`` (decoded once into a uint8 tensor cache) and
``stream.StreamingData`` (decoded batch by batch from the files). Both yield the same batches for the
same generator, because they split (``splits.split_indices``), order (``splits.shard_order``) and
decode (``folders.decode_pair``) with the same functions. ``load.load_data`` makes one or the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, TypeVar, runtime_checkable

import torch

from .splits import split_indices

S = TypeVar("S", bound="SegmentationSource")


@runtime_checkable
class SegmentationSource(Protocol):
    """Image/mask samples at one size: (uint8 (B, C, H, W) images, int64 (B, H, W) masks) batches."""

    def __len__(self) -> int: ...

    @property
    def nbytes(self) -> int:
        """Bytes the decoded samples take (or would take) in memory."""
        ...

    def to(self: S, device: torch.device | str) -> S:
        """The samples on ``device`` (a stream moves each batch as it yields it, and returns itself)."""
        ...

    def subset(self: S, index: torch.Tensor | Sequence[int]) -> S:
        """The samples at ``index``, in that order."""
        ...

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
        """One epoch of batches on ``device``, in ``splits.shard_order``'s order for this rank."""
        ...

    def split(self: S, val_fraction: float, seed: int = 0) -> tuple[S, S]:
        """A seeded, deterministic split into (train, validation): the same samples for either source."""
        train, val = split_indices(len(self), val_fraction, seed)
        return self.subset(train), self.subset(val)

    def class_counts(self, n_classes: int) -> torch.Tensor:
        """Pixels per class id 0..n_classes-1 over the whole set (one pass over the batches)."""
        counts = torch.zeros(n_classes, dtype=torch.int64)
        for _, y in self.batches(64, device="cpu"):
            y = y.reshape(-1)
            counts += torch.bincount(y[(y >= 0) & (y < n_classes)], minlength=n_classes)[:n_classes]
        return counts
