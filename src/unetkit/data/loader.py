"""The in-memory data set: decoded once into a uint8 tensor cache, batched on the device.

Decoding PNGs every epoch is what makes small-image training slow; the seed's 96x128 RGB images
take 37 KB each as uint8, so tens of thousands fit in memory (and on a GPU). Scaling to [0, 1]
and augmentation happen on the device, per batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..preprocess import resize_images, resize_masks, to_channels
from .folders import load_pairs, pair_files


def mask_dtype(n_classes: int, ignore_index: int | None) -> torch.dtype:
    """uint8 when every id fits (the usual case), int32 otherwise."""
    top = max(n_classes - 1, ignore_index if ignore_index is not None else 0)
    return torch.uint8 if top < 256 else torch.int32


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


@dataclass
class SegmentationData:
    """Images (N, C, H, W) uint8 and masks (N, H, W) of class ids, already at the model's size."""

    images: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype not in (torch.uint8, torch.int32) or self.images.dim() != 4:
            raise DataError(
                "images must be a (N, C, H, W) uint8 (or int32 for 16-bit) tensor, "
                f"got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if (
            self.masks.dim() != 3
            or self.masks.shape[0] != self.images.shape[0]
            or self.masks.shape[1:] != self.images.shape[2:]
        ):
            raise DataError(f"masks {tuple(self.masks.shape)} do not match images {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes

    def to(self, device: torch.device | str) -> SegmentationData:
        return SegmentationData(self.images.to(device), self.masks.to(device))

    def subset(self, index: torch.Tensor | list[int]) -> SegmentationData:
        index = torch.as_tensor(index, dtype=torch.long)
        return SegmentationData(self.images[index], self.masks[index])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[SegmentationData, SegmentationData]:
        """A seeded, deterministic split into (train, validation)."""
        train, val = split_indices(len(self), val_fraction, seed)
        return self.subset(train), self.subset(val)

    def class_counts(self, n_classes: int) -> torch.Tensor:
        m = self.masks.reshape(-1).long()
        return torch.bincount(m[m < n_classes], minlength=n_classes)[:n_classes]

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
        """Yield (uint8 images, int64 masks) batches on ``device``.

        With several ranks each takes every world_size-th sample of the shared permutation, so the
        ranks together see each sample once per epoch, as DistributedSampler does.
        """
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if world_size > 1:
            per_rank = -(-n // world_size)
            order = torch.cat([order, order[: per_rank * world_size - n]])  # pad as DistributedSampler
            order = order[rank::world_size]
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" is the current GPU, where .to("cuda") puts data
            device = torch.device("cuda", torch.cuda.current_device())
        on_device = self.images.device == device
        if on_device:
            order = order.to(device)  # once per epoch: a copy per batch would make the host wait for the GPU
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            if drop_last and len(idx) < batch_size:
                break
            if on_device:
                yield self.images.index_select(0, idx), self.masks.index_select(0, idx).long()
            else:
                x, y = self.images.index_select(0, idx), self.masks.index_select(0, idx)
                if device.type == "cuda" and x.device.type == "cpu":
                    x, y = x.pin_memory(), y.pin_memory()
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True).long()

    @classmethod
    def from_arrays(
        cls,
        images: np.ndarray,
        masks: np.ndarray,
        input_size: tuple[int, int, int],
        *,
        n_classes: int,
        ignore_index: int | None = None,
        resize: str = "bilinear",
    ) -> SegmentationData:
        """From numpy arrays as a notebook holds them: images (N, H, W[, C]) uint8 or floats in [0, 1];
        masks (N, H, W[, 1]) class ids, or one-hot (N, H, W, n_classes) as the seed's
        CategoricalCrossentropy remark allows (converted to ids: for hard one-hot labels the two
        losses are the same).
        """
        images, masks = np.asarray(images), np.asarray(masks)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise DataError(f"images must be (N, H, W, C), got shape {images.shape}")
        if images.dtype not in (np.uint8, np.uint16):
            if not np.issubdtype(images.dtype, np.floating) or np.nanmax(images) > 1.0 or np.nanmin(images) < 0:
                raise DataError("images must be uint8 (0-255) or floats in [0, 1]")
            images = np.round(np.nan_to_num(images) * 255).astype(np.uint8)
        masks = _mask_ids(masks, n_classes)
        if masks.shape[:3] != images.shape[:3]:
            raise DataError(f"masks {masks.shape} do not match images {images.shape[:3]}")
        _check_values(masks, n_classes, ignore_index, "the masks array")
        h, w, c = input_size
        x = np.ascontiguousarray(np.stack([to_channels(im, c) for im in images]))
        x = torch.from_numpy(x.astype(np.int32) if x.dtype == np.uint16 else x).permute(0, 3, 1, 2)
        y = torch.from_numpy(masks.astype(np.int64)).to(mask_dtype(n_classes, ignore_index))
        return cls(resize_images(x.contiguous(), (h, w), resize), resize_masks(y, (h, w)))

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
        progress=None,
    ) -> tuple[SegmentationData, str]:
        """Read and validate a folder pair; returns the data and the mask mode used."""
        pairs = pair_files(images, masks)
        x, y, mode = load_pairs(
            pairs,
            input_size,
            n_classes=n_classes,
            mask_mode=mask_mode,
            palette=palette,
            ignore_index=ignore_index,
            resize=resize,
            progress=progress,
        )
        return cls(x, y), mode


def _mask_ids(masks: np.ndarray, n_classes: int) -> np.ndarray:
    if masks.ndim == 4 and masks.shape[-1] == 1:
        return masks[..., 0]
    if masks.ndim == 4 and masks.shape[-1] == n_classes and n_classes > 1:
        if not (np.isin(masks, (0, 1)).all() and (masks.sum(-1) == 1).all()):
            raise DataError(
                "4-D masks are read as one-hot (N, H, W, n_classes) and must hold exactly one 1 "
                "per pixel; pass class ids (N, H, W) otherwise"
            )
        return masks.argmax(-1)
    if masks.ndim != 3:
        raise DataError(f"masks must be (N, H, W) class ids or (N, H, W, n_classes) one-hot, got {masks.shape}")
    if not np.issubdtype(masks.dtype, np.integer):
        if not np.all(np.mod(masks, 1) == 0):
            raise DataError("masks hold non-integer values; they must be class ids")
    return masks


def _check_values(masks: np.ndarray, n_classes: int, ignore_index: int | None, where: str) -> None:
    values = np.unique(masks)
    bad = [int(v) for v in values if (v < 0 or v >= n_classes) and v != ignore_index]
    if bad:
        raise DataError(
            f"{where} holds values {bad[:10]} outside 0..{n_classes - 1}; set n_classes to cover "
            "them, or mark them with ignore_index"
        )
