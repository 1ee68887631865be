"""Mask post-processing: small components removed, holes filled, the largest component kept (extra ``post``).

Each step works on a class-id mask (H, W) and returns a new one of the same dtype. Pixels a step takes
away from a class are given the class of the nearest pixel that was kept, so that no pixel is left
without a class and nothing is invented where the model saw nothing. Connectivity is 4-neighbour
(scipy.ndimage's default), the same for every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, needs_extra


def _ndimage() -> Any:
    try:
        from scipy import ndimage
    except ImportError:
        raise needs_extra("post-processing", "scipy", "post") from None
    return ndimage


@dataclass(frozen=True)
class PostProcess:
    """``min_size``: drop components under N pixels (every class); ``fill_holes`` / ``keep_largest``: class ids."""

    min_size: int = 0
    fill_holes: tuple[int, ...] = field(default_factory=tuple)
    keep_largest: tuple[int, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise ConfigError(f"--min-size must be 0 (off) or a number of pixels, got {self.min_size}")

    @property
    def enabled(self) -> bool:
        return bool(self.min_size or self.fill_holes or self.keep_largest)

    def steps(self) -> list[tuple[str, PostProcess]]:
        """Each option on its own, named as on the command line (for ``evaluate``'s comparison)."""
        out: list[tuple[str, PostProcess]] = []
        if self.min_size:
            out.append((f"--min-size {self.min_size}", PostProcess(min_size=self.min_size)))
        for c in self.keep_largest:
            out.append((f"--keep-largest {c}", PostProcess(keep_largest=(c,))))
        for c in self.fill_holes:
            out.append((f"--fill-holes {c}", PostProcess(fill_holes=(c,))))
        return out

    def describe(self) -> str:
        return ", ".join(name for name, _ in self.steps()) or "none"

    def __call__(self, mask: np.ndarray) -> np.ndarray:
        """The post-processed copy of an (H, W) class-id mask: small components, then largest, then holes."""
        if not self.enabled:
            return mask
        nd = _ndimage()
        out = np.array(mask, copy=True)
        if self.min_size:
            out = _remove_small(nd, out, self.min_size)
        for c in self.keep_largest:
            out = _keep_largest(nd, out, c)
        for c in self.fill_holes:
            out[nd.binary_fill_holes(out == c)] = c
        return out


def _refill(nd: Any, mask: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Give each removed pixel the class of the nearest pixel that stays."""
    if not removed.any() or removed.all():
        return mask
    idx = nd.distance_transform_edt(removed, return_distances=False, return_indices=True)
    filled = mask[tuple(idx)]
    return np.where(removed, filled, mask).astype(mask.dtype)


def _remove_small(nd: Any, mask: np.ndarray, min_size: int) -> np.ndarray:
    removed = np.zeros(mask.shape, dtype=bool)
    for c in np.unique(mask):
        labels, n = nd.label(mask == c)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes < min_size)
        small = small[small > 0]
        if len(small):
            removed |= np.isin(labels, small)
    return _refill(nd, mask, removed)


def _keep_largest(nd: Any, mask: np.ndarray, c: int) -> np.ndarray:
    labels, n = nd.label(mask == c)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return _refill(nd, mask, (labels > 0) & (labels != int(sizes.argmax())))


def class_id(value: str | int, names: Sequence[str], n_classes: int, option: str) -> int:
    """A class given by id or by name -> its id, checked against the model's classes."""
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        c = int(text)
    elif text in names:
        c = list(names).index(text)
    else:
        known = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ConfigError(f"{option} {text!r} is not a class id or name of this model (classes: {known})")
    if not 0 <= c < n_classes:
        raise ConfigError(f"{option} {c} is outside the model's classes 0..{n_classes - 1}")
    return c


def from_options(
    min_size: int | None,
    fill_holes: Sequence[str | int] | None,
    keep_largest: Sequence[str | int] | None,
    names: Sequence[str],
    n_classes: int,
) -> PostProcess | None:
    """The PostProcess the command-line options ask for, or None when they ask for nothing."""
    post = PostProcess(
        min_size=int(min_size or 0),
        fill_holes=tuple(class_id(v, names, n_classes, "--fill-holes") for v in fill_holes or ()),
        keep_largest=tuple(class_id(v, names, n_classes, "--keep-largest") for v in keep_largest or ()),
    )
    if not post.enabled:
        return None
    _ndimage()  # a missing scipy is said now, not after the first image
    return post
