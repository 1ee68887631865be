"""The one preprocessing path: channels, resize, normalisation. Training, evaluation, prediction,
export and serving all call these functions, with settings stored in the run's config.

Images travel as integers until the last moment (``to_float``) so that a cached data set is small
and the device does the scaling: uint8 for 8-bit images, int32 tensors for 16-bit ones (numpy
uint16; torch has few uint16 kernels), so 16-bit data keeps its full precision.

Normalisation (``PreprocessConfig.normalize``), per channel, with statistics of the training set:

- ``scale`` (the seed): ``x / max_value``; max_value is 255, or 65535 when the training images are 16-bit.
- ``mean-std``: ``(x - mean) / std``.
- ``percentile``: ``clip((x - low) / (high - low), 0, 1)`` with low/high the 1st/99th percentiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as PIL's convert("L") uses
_LUMA = np.array([299, 587, 114], dtype=np.uint32)


PERCENTILES = (1.0, 99.0)
STAT_PIXELS = 1 << 20  # pixels per channel sampled for percentiles


def max_value(image: np.ndarray | torch.Tensor) -> int:
    """255 for 8-bit images, 65535 for 16-bit ones (uint16 arrays, int32 tensors)."""
    return 255 if image.dtype in (np.uint8, torch.uint8) else 65535


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert an (H, W, C) image with C in 1/3/4 to ``channels`` (1, 3 or 4) channels; other band
    counts (multi-band TIFFs) must match ``channels`` exactly. The dtype (uint8/uint16) is kept."""
    if image.ndim == 2:
        image = image[:, :, None]
    c = image.shape[2]
    if c == channels:
        return image
    if c > 4 or channels > 4:
        from .errors import DataError

        raise DataError(
            f"an image has {c} bands but the model takes {channels}; set --channels {c} "
            "(and train on images with that many bands)"
        )
    if c == 4:  # drop alpha, as PIL's RGBA -> RGB does
        image, c = image[:, :, :3], 3
        if channels == 3:
            return image
    if channels == 1:
        if c == 1:
            return image
        luma = (image[:, :, :3].astype(np.uint64) * _LUMA).sum(axis=2)
        return ((luma + 500) // 1000).astype(image.dtype)[:, :, None]
    rgb = np.repeat(image, 3, axis=2) if c == 1 else image
    if channels == 3:
        return rgb
    alpha = np.full(rgb.shape[:2] + (1,), max_value(image), dtype=image.dtype)
    return np.concatenate([rgb, alpha], axis=2)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An (H, W, C) image as 8-bit RGB for pictures (overlays): the first 3 of many bands, and 16-bit
    values stretched from the image's min..max (only for display; the network never sees this)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] > 4:
        image = image[:, :, :3]
    if image.dtype != np.uint8:
        a = image.astype(np.float64)
        lo, hi = float(a.min()), float(a.max())
        image = np.zeros(a.shape, np.uint8) if hi <= lo else np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    return to_channels(image, 3)


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (N, C, H, W) uint8 (or int32, 16-bit) images to ``size`` = (H, W); the dtype is kept.

    Bilinear uses antialiasing when shrinking (a 512x512 slice at 96x128 would alias otherwise);
    ``nearest`` is the tutorial's ``tf.image.resize(..., method='nearest')`` (half-pixel centres).
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    x = images.float()
    if mode == "nearest":
        out = F.interpolate(x, size=size, mode="nearest-exact")
    else:
        shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
        out = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.round_().clamp_(0, max_value(images)).to(images.dtype)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, H, W) integer masks with nearest neighbour only (never mix class ids)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    out = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].to(masks.dtype)


def image_to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    """(H, W, C) uint8/uint16 numpy -> (1, channels, H, W) uint8/int32 tensor."""
    image = np.ascontiguousarray(to_channels(image, channels))
    if image.dtype == np.uint16:
        image = image.astype(np.int32)
    elif image.dtype != np.uint8:
        image = np.clip(image, 0, 255).astype(np.uint8)
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def preprocess_image(image: np.ndarray, input_size: tuple[int, int, int], resize: str = "bilinear") -> torch.Tensor:
    """(H, W, C) uint8 image -> (1, C, H', W') uint8 tensor at the model's input size."""
    h, w, c = input_size
    return resize_images(image_to_tensor(image, c), (h, w), resize)


def to_float(images: torch.Tensor, norm: Any = None) -> torch.Tensor:
    """(N, C, H, W) integer images -> the float network input, normalised as ``norm`` (a PreprocessConfig) says.

    Without ``norm``: uint8 / 255, the seed's scaling (and 16-bit / 65535).
    """
    x = images.float()
    mode = getattr(norm, "normalize", "scale")
    if mode == "scale":
        top = float(getattr(norm, "max_value", 0.0) or max_value(images))
        return x.div_(top)
    if mode == "mean-std":
        lo, div = norm.mean, norm.std
    else:
        lo, div = norm.low, [h - lo_ for h, lo_ in zip(norm.high, norm.low, strict=True)]
    shape = (1, -1, 1, 1)
    lo_t = torch.tensor(lo, dtype=torch.float32, device=x.device).view(shape)
    div_t = torch.tensor([max(d, 1e-12) for d in div], dtype=torch.float32, device=x.device).view(shape)
    x = x.sub_(lo_t).div_(div_t)
    return x.clamp_(0.0, 1.0) if mode == "percentile" else x


def normalization_stats(images: torch.Tensor, mode: str, seed: int = 0) -> dict[str, Any]:
    """Per-channel statistics of (N, C, H, W) training images for ``mode``, as PreprocessConfig fields.

    ``mean-std``: exact over all pixels (float64 sums); ``percentile``: over up to STAT_PIXELS
    pixels per channel drawn with a fixed seed, so the result is reproducible.
    """
    out: dict[str, Any] = {"max_value": float(max_value(images))}
    c = images.shape[1]
    if mode == "mean-std":
        flat = images.transpose(0, 1).reshape(c, -1).double()
        out["mean"] = [float(v) for v in flat.mean(1)]
        out["std"] = [max(float(v), 1e-6) for v in flat.std(1, unbiased=False)]
    elif mode == "percentile":
        flat = images.transpose(0, 1).reshape(c, -1)
        if flat.shape[1] > STAT_PIXELS:
            idx = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed))[:STAT_PIXELS]
            flat = flat[:, idx.to(flat.device)]
        q = torch.quantile(
            flat.double(), torch.tensor(PERCENTILES, dtype=torch.float64, device=flat.device) / 100, dim=1
        )
        out["low"] = [float(v) for v in q[0]]
        out["high"] = [float(v) for v in q[1]]
    return out
