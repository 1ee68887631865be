"""Joint image/mask augmentation on the device, vectorised over the batch and seeded by a generator.

Why here: the training cache already lives on the device as uint8, so augmenting there costs one
``grid_sample`` per batch instead of a CPU pipeline per image. Every sample gets one affine map
(horizontal flip, scale with a random crop or pad, small rotation); the image is resampled
bilinearly and the mask with nearest neighbour through the same sampling grid, so they stay
aligned pixel for pixel and the mask only ever holds its original ids. Where the map reaches
outside the source (zooming out, rotated corners) the image is padded with 0 and the mask with
``ignore_index``, so the loss and the metrics skip those pixels. Colour jitter (brightness,
contrast, saturation) touches the image only, and runs before the geometry so padding stays 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)


def pads(cfg: AugmentConfig) -> bool:
    """True when ``cfg`` can move pixels in from outside the image, i.e. masks may get ``ignore_index``."""
    return cfg.scale != (1.0, 1.0) or cfg.rotate > 0


def effective_ignore_index(ignore_index: int | None, cfg: AugmentConfig, n_classes: int) -> int | None:
    """The ignore index training batches carry: the data's own, else 255 (or n_classes when that is
    larger) when ``cfg`` pads masks, so padded pixels count in neither the loss nor the metrics."""
    if ignore_index is not None or not (cfg.enabled and pads(cfg)):
        return ignore_index
    return max(255, n_classes)


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, *, ignore_index: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment float images (N, C, H, W) in [0, 1] and integer masks (N, H, W) jointly.

    Random draws come from ``generator`` only (on the tensors' device), in a fixed order, so a batch
    augments the same way for the same generator state. A config with everything off returns the
    inputs themselves.
    """
    if (
        images.dim() != 4
        or masks.dim() != 3
        or images.shape[0] != masks.shape[0]
        or images.shape[2:] != masks.shape[1:]
    ):
        raise ValueError(
            f"expected images (N, C, H, W) and masks (N, H, W) of the same size, got "
            f"{tuple(images.shape)} and {tuple(masks.shape)}"
        )
    if not cfg.enabled or images.shape[0] == 0:
        return images, masks
    n = images.shape[0]
    # One draw for everything; columns: flip, scale, rotation, shift y, shift x, then the three jitters.
    u = torch.rand(n, 8, generator=generator, device=images.device, dtype=torch.float32)
    images = _jitter(images, cfg, u[:, 5:8])
    if not pads(cfg):
        if cfg.hflip:  # a pure flip needs no resampling: exact and cheap
            flip = u[:, 0] < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
        return images, masks
    theta = _affine(cfg, u[:, :5], images.shape[2], images.shape[3])
    grid = F.affine_grid(theta, [n, 1, images.shape[2], images.shape[3]], align_corners=False)
    out_images = F.grid_sample(
        images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    # Masks as float ids + 1: out of bounds samples 0, which becomes ignore_index; ids stay exact in fp32.
    shifted = (masks.to(torch.float32) + 1.0).unsqueeze(1)
    sampled = F.grid_sample(shifted, grid.float(), mode="nearest", padding_mode="zeros", align_corners=False)[:, 0]
    out_masks = torch.where(sampled > 0, sampled - 1.0, float(ignore_index)).round_().to(masks.dtype)
    return out_images, out_masks


def _affine(cfg: AugmentConfig, u: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, 2, 3) maps from output to input coordinates (normalised, align_corners=False).

    Scale s > 1 zooms in (a random crop of 1/s of the image), s < 1 zooms out (the image lands at a
    random place inside a padded frame); s is drawn log-uniformly so zooming in and out by the same
    factor are equally likely. The rotation is done in pixel space so non-square images are not sheared.
    """
    lo, hi = cfg.scale
    scale = torch.exp(math.log(lo) + u[:, 1] * (math.log(hi) - math.log(lo)))
    angle = (2 * u[:, 2] - 1) * math.radians(cfg.rotate)
    cos, sin = torch.cos(angle), torch.sin(angle)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones_like(scale)
    aspect = height / width
    inv = 1.0 / scale
    theta = torch.zeros(u.shape[0], 2, 3, device=u.device, dtype=torch.float32)
    theta[:, 0, 0] = cos * inv * flip
    theta[:, 0, 1] = -sin * aspect * inv
    theta[:, 1, 0] = sin / aspect * inv * flip
    theta[:, 1, 1] = cos * inv
    reach = (1.0 - inv).abs()  # how far the window may move and stay inside (zoom in) or cover (zoom out)
    theta[:, 1, 2] = (2 * u[:, 3] - 1) * reach
    theta[:, 0, 2] = (2 * u[:, 4] - 1) * reach
    return theta


def _jitter(images: torch.Tensor, cfg: AugmentConfig, u: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation with factors uniform in [1 - a, 1 + a]; clamped to [0, 1].

    Only the colour channels change (a 4th, alpha channel is kept); saturation needs 3 of them.
    """
    if not (cfg.brightness or cfg.contrast or cfg.saturation):
        return images
    view = (-1, 1, 1, 1)
    colour = 3 if images.shape[1] >= 3 else images.shape[1]
    x = images[:, :colour]
    if cfg.brightness:
        x = x * (1 + cfg.brightness * (2 * u[:, 0] - 1)).view(view)
    if cfg.contrast:
        mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (1 + cfg.contrast * (2 * u[:, 1] - 1)).view(view) + mean
    if cfg.saturation and colour == 3:
        gray = _gray(x)
        x = (x - gray) * (1 + cfg.saturation * (2 * u[:, 2] - 1)).view(view) + gray
    x = x.clamp(0.0, 1.0)
    return torch.cat([x, images[:, colour:]], dim=1) if images.shape[1] > colour else x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of RGB(A) images; the image itself for one channel."""
    if x.shape[1] < 3:
        return x[:, :1]
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b
