"""The one preprocessing path: channels, resize, scaling. Training, evaluation, prediction,
export and serving all call these functions, with settings stored in the run's config.

Images travel as uint8 until the last moment (``to_float``) so that a cached data set is small
and the device does the scaling.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# ITU-R 601-2 luma, as PIL's convert("L") uses
_LUMA = np.array([299, 587, 114], dtype=np.uint32)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Convert an (H, W, C) uint8 image with C in 1/3/4 to ``channels`` (1, 3 or 4) channels."""
    if image.ndim == 2:
        image = image[:, :, None]
    c = image.shape[2]
    if c == channels:
        return image
    if c == 4:  # drop alpha, as PIL's RGBA -> RGB does
        image, c = image[:, :, :3], 3
        if channels == 3:
            return image
    if channels == 1:
        if c == 1:
            return image
        luma = (image[:, :, :3].astype(np.uint32) * _LUMA).sum(axis=2)
        return ((luma + 500) // 1000).astype(np.uint8)[:, :, None]
    rgb = np.repeat(image, 3, axis=2) if c == 1 else image
    if channels == 3:
        return rgb
    alpha = np.full(rgb.shape[:2] + (1,), 255, dtype=np.uint8)
    return np.concatenate([rgb, alpha], axis=2)


def resize_images(images: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to ``size`` = (H, W); the result is uint8 again.

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
    return out.round_().clamp_(0, 255).to(torch.uint8)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize (N, H, W) integer masks with nearest neighbour only (never mix class ids)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    out = F.interpolate(masks[:, None].float(), size=size, mode="nearest-exact")
    return out[:, 0].to(masks.dtype)


def image_to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    """(H, W, C) uint8 numpy -> (1, channels, H, W) uint8 tensor."""
    image = np.ascontiguousarray(to_channels(image, channels))
    return torch.from_numpy(image).permute(2, 0, 1)[None]


def preprocess_image(image: np.ndarray, input_size: tuple[int, int, int], resize: str = "bilinear") -> torch.Tensor:
    """(H, W, C) uint8 image -> (1, C, H', W') uint8 tensor at the model's input size."""
    h, w, c = input_size
    return resize_images(image_to_tensor(image, c), (h, w), resize)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1], the seed's scaling."""
    return images.float().div_(255.0)
