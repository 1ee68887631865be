"""The in-memory data set: decoded once into a uint8 tensor cache, batched on the device.

Decoding PNGs every epoch is what makes small-image training slow; the seed's 96x128 RGB images
take 37 KB each as uint8, so tens of thousands fit in memory (and on a GPU). Scaling to [0, 1]
and augmentation happen on the device, per batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from ..preprocess import resize_images, resize_masks, to_channels
from .folders import load_pairs, pair_files
from .masks import mask_tensor_dtype
from .source import SegmentationSource
from .splits import shard_order


@dataclass
class SegmentationData(SegmentationSource):
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

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"SegmentationData({n} images, {c}x{h}x{w} uint8, masks {self.masks.dtype}, on {self.images.device})"

    @property
    def nbytes(self) -> int:
        return self.images.nbytes + self.masks.nbytes

    def to(self, device: torch.device | str) -> SegmentationData:
        return SegmentationData(self.images.to(device), self.masks.to(device))

    def subset(self, index: torch.Tensor | Sequence[int]) -> SegmentationData:
        index = torch.as_tensor(index, dtype=torch.long)
        return SegmentationData(self.images[index], self.masks[index])

    def class_counts(self, n_classes: int) -> torch.Tensor:
        """Pixels per class id 0..n_classes-1, counted on the cache."""
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
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (uint8 images, int64 masks) batches on ``device``, in ``splits.shard_order``'s order."""
        order = shard_order(len(self), shuffle=shuffle, generator=generator, rank=rank, world_size=world_size)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" is the current GPU, where .to("cuda") puts data
            device = torch.device("cuda", torch.cuda.current_device())
        on_device = self.images.device == device
        if on_device:
            order = order.to(device)  # once per epoch: a copy per batch would make the host wait for the GPU
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
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
        mask_mode: str = "auto",
    ) -> SegmentationData:
        """From numpy arrays as a notebook holds them: images (N, H, W[, C]) uint8 or floats in [0, 1];
        masks (N, H, W[, 1]) class ids, or one-hot (N, H, W, n_classes) as the seed's
        CategoricalCrossentropy remark allows (converted to ids: for hard one-hot labels the two
        losses are the same), or the tutorial's own colour masks (N, H, W, 3) with the class id in
        their channels (``mask_mode="channels"``; taken by default unless there are as many channels as
        classes, which reads as one-hot).
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
        masks = _mask_ids(masks, n_classes, mask_mode)
        if masks.shape[:3] != images.shape[:3]:
            raise DataError(f"masks {masks.shape} do not match images {images.shape[:3]}")
        _check_values(masks, n_classes, ignore_index, "the masks array")
        h, w, c = input_size
        stacked = np.ascontiguousarray(np.stack([to_channels(im, c) for im in images]))
        x = torch.from_numpy(stacked.astype(np.int32) if stacked.dtype == np.uint16 else stacked).permute(0, 3, 1, 2)
        y = torch.from_numpy(masks.astype(np.int64)).to(mask_tensor_dtype(n_classes, ignore_index))
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
        progress: Callable[[int], object] | None = None,
        recursive: bool = False,
        skip_bad: bool = False,
        log: Callable[[str], object] | None = None,
        label_map: Sequence[int] | None = None,
    ) -> tuple[SegmentationData, str]:
        """Read and validate a folder pair; returns the data and the mask mode used.

        ``recursive`` reads sub-folders too; ``skip_bad`` leaves out unreadable pairs, reported via ``log``;
        ``label_map`` (source id -> class id) maps masks that hold source ids.
        """
        pairs = pair_files(images, masks, recursive=recursive)
        x, y, mode = load_pairs(
            pairs,
            input_size,
            n_classes=n_classes,
            mask_mode=mask_mode,
            palette=palette,
            ignore_index=ignore_index,
            resize=resize,
            progress=progress,
            skip_bad=skip_bad,
            log=log,
            label_map=label_map,
        )
        return cls(x, y), mode


def _is_one_hot(masks: np.ndarray) -> bool:
    return bool(np.isin(masks, (0, 1)).all() and (masks.sum(-1) == 1).all())


def _mask_ids(masks: np.ndarray, n_classes: int, mask_mode: str = "auto") -> np.ndarray:
    """Class ids (N, H, W) from ids, (N, H, W, 1), one-hot (N, H, W, n_classes) or colour (N, H, W, 3/4) masks.

    Colour masks are read as ``--mask-mode channels`` reads the tutorial's CARLA masks: the class id is
    the maximum over the colour channels (alpha dropped); with as many channels as classes the masks are
    one-hot unless ``mask_mode="channels"``.
    """
    if mask_mode not in ("auto", "channels"):
        raise DataError(f"from_arrays reads mask_mode 'auto' or 'channels', got {mask_mode!r}")
    if masks.ndim == 4 and masks.shape[-1] == 1:
        return masks[..., 0]
    colour = masks.ndim == 4 and masks.shape[-1] in (3, 4)
    if colour and (mask_mode == "channels" or masks.shape[-1] != n_classes):  # as many channels as classes: one-hot
        return masks[..., :3].max(axis=-1)
    if masks.ndim == 4 and masks.shape[-1] == n_classes and n_classes > 1:
        if not _is_one_hot(masks):
            raise DataError(
                "4-D masks are read as one-hot (N, H, W, n_classes) and must hold exactly one 1 "
                "per pixel; pass class ids (N, H, W) otherwise"
            )
        return masks.argmax(-1)
    if masks.ndim != 3:
        raise DataError(
            "masks must be (N, H, W) class ids, (N, H, W, n_classes) one-hot or (N, H, W, 3) colour masks "
            f"holding the id in their channels (as --mask-mode channels), got {masks.shape}"
        )
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


def class_presence(masks: torch.Tensor, n_classes: int, ignore_index: int | None) -> tuple[list[int], int, int]:
    """(pixels per class, pixels ignored, all pixels) of a (N, H, W) mask tensor."""
    m = masks.reshape(-1).long()
    counts = torch.bincount(m[(m >= 0) & (m < n_classes)], minlength=n_classes)[:n_classes]
    ignored = int((m == ignore_index).sum()) if ignore_index is not None else 0
    return [int(c) for c in counts], ignored, m.numel()


def presence_report(
    counts: Sequence[int],
    ignored: int,
    total: int,
    *,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = None,
    mask_mode: str | None = None,
) -> list[str]:
    """Lines saying how the masks' pixels spread over the classes, then warnings with the likely fix.

    Warns when a class never appears, when more than half the pixels are ignored, and when n_classes is
    larger than the classes found: each is a sign that the masks were read in a way the user did not mean.
    """
    n = len(counts)
    names = list(class_names) if class_names else [f"class_{i}" for i in range(n)]
    share = [100.0 * c / max(total, 1) for c in counts]
    line = "class pixels: " + ", ".join(f"{names[i]} {share[i]:.1f}%" for i in range(n))
    if ignore_index is not None:
        line += f"; ignored ({ignore_index}) {100.0 * ignored / max(total, 1):.1f}%"
    lines = [line]
    present = [i for i in range(n) if counts[i]]
    absent = [i for i in range(n) if not counts[i]]
    ignored_share = 100.0 * ignored / max(total, 1)
    if ignore_index == 255 and ignored and present == [0]:
        lines.append(
            f"warning: the masks hold only 0 and 255, and 255 is ignored (--ignore-index 255), so the model only "
            f"ever sees class 0 ({ignored_share:.0f}% of the pixels are ignored); these look like binary 0/255 "
            "masks: leave out --ignore-index 255 and use --mask-mode binary"
        )
        return lines
    if ignore_index is not None and ignored > total / 2:
        lines.append(
            f"warning: {ignored_share:.0f}% of the pixels are ignored (--ignore-index {ignore_index}); check that "
            f"{ignore_index} is really the 'void' label, and --mask-mode"
        )
    if absent and present:
        missing = ", ".join(names[i] for i in absent[:10]) + (
            f" and {len(absent) - 10} more" if len(absent) > 10 else ""
        )
        fix = "the model never learns them"
        if len(present) >= 2 and present == list(range(len(present))):
            fix += f"; if the data has {len(present)} classes, use --n-classes {len(present)}"
        if mask_mode == "index" and present == [0, 255]:
            fix += "; for binary 0/255 masks use --n-classes 2 --mask-mode binary"
        lines.append(
            f"warning: n_classes is {n} but {len(absent)} class(es) never appear in the masks ({missing}): {fix}"
        )
    return lines
