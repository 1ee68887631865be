"""Joint image/mask augmentation on the device, vectorised over the batch and seeded by a generator.

Why here: the training cache already lives on the device as uint8, so augmenting there costs one
``grid_sample`` per batch instead of a CPU pipeline per image. Every sample gets one affine map
(horizontal flip, scale with a random crop or pad, small rotation); the image is resampled
bilinearly and the mask with nearest neighbour through the same sampling grid, so they stay
aligned pixel for pixel and the mask only ever holds its original ids. Where the map reaches
outside the source (zooming out, rotated corners) the image is padded with 0 and the mask with
``ignore_index``, so the loss and the metrics skip those pixels. Colour jitter (brightness,
contrast, saturation, hue) touches the image only, and runs before the geometry so padding stays 0.

``random_crops`` is the same idea for training on crops of images kept at their native size: each
sample gets a window of ``crop / scale`` source pixels (scale drawn log-uniformly from the config's
range), flipped or not, placed at random (or, for a share of the samples, centred on a pixel of a
rare class), and resampled to the crop size; where the window leaves the image the mask gets
``ignore_index``. At scale 1 the window sits on whole pixels, so a crop is an exact copy.
``pad_to_multiple`` pads whole images (validation at native size) with the ignore index likewise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import AugmentConfig

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses.
_LUMA = (0.299, 0.587, 0.114)
# RGB -> YIQ (NTSC): a hue shift is a rotation of the (I, Q) chroma plane that keeps the luma Y.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])


def pads(cfg: AugmentConfig) -> bool:
    """True when ``cfg`` can move pixels in from outside the image, i.e. masks may get ``ignore_index``."""
    return cfg.scale != (1.0, 1.0) or cfg.rotate > 0


def effective_ignore_index(
    ignore_index: int | None, cfg: AugmentConfig, n_classes: int, crops: bool = False
) -> int | None:
    """The ignore index training batches carry: the data's own, else 255 (or n_classes when that is
    larger) when ``cfg`` (or crop training) pads masks, so padded pixels count in neither the loss
    nor the metrics."""
    if ignore_index is not None or not (crops or (cfg.enabled and pads(cfg))):
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
    _check_pair(images, masks)
    if not cfg.enabled or images.shape[0] == 0:
        return images, masks
    n = images.shape[0]
    # One draw for everything; columns: flip, scale, rotation, shift y, shift x, then the three jitters.
    u = torch.rand(n, 8, generator=generator, device=images.device, dtype=torch.float32)
    images = _jitter(images, cfg, u[:, 5:8], _hue_draw(cfg, n, generator, images.device))
    if not pads(cfg):
        if cfg.hflip:  # a pure flip needs no resampling: exact and cheap
            flip = u[:, 0] < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            masks = torch.where(flip[:, None, None], masks.flip(-1), masks)
    else:
        theta = _affine(cfg, u[:, :5], images.shape[2], images.shape[3])
        images, masks = _resample(images, masks, theta, (images.shape[2], images.shape[3]), ignore_index)
    return copy_paste(images, masks, cfg, generator=generator)


def copy_paste(
    images: torch.Tensor, masks: torch.Tensor, cfg: AugmentConfig, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy-paste (Ghiasi et al. 2021, for semantic masks): with probability ``cfg.copy_paste`` a sample
    gets every pixel of ``cfg.paste_classes`` from another sample of the batch (image and mask, at the
    same place, mirrored half the time) pasted over it, so rare objects appear more often per update.
    The draws come after all the others, so configs without copy-paste augment exactly as before."""
    n = images.shape[0]
    if not cfg.copy_paste or n < 2:
        return images, masks
    u = torch.rand(n, 2, generator=generator, device=images.device, dtype=torch.float32)
    shift = int(torch.randint(1, n, (1,), generator=generator, device=images.device).item())
    src = torch.roll(torch.arange(n, device=images.device), -shift)  # each sample takes from one `shift` on
    mirror = u[:, 1] < 0.5
    xs = torch.where(mirror[:, None, None, None], images[src].flip(-1), images[src])
    ys = torch.where(mirror[:, None, None], masks[src].flip(-1), masks[src])
    take = u[:, 0] < cfg.copy_paste
    classes = torch.tensor(cfg.paste_classes, device=masks.device, dtype=masks.dtype)
    paste = torch.isin(ys, classes) & take[:, None, None]
    return torch.where(paste[:, None], xs, images), torch.where(paste, ys, masks)


def _check_pair(images: torch.Tensor, masks: torch.Tensor) -> None:
    """A ValueError unless images are (N, C, H, W) and masks (N, H, W) of the same N, H and W."""
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


def _resample(
    images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (bilinear, 0 outside) and masks (nearest, ``ignore_index`` outside) through the same affine
    maps ``theta`` (N, 2, 3), to ``size``: the one resampling step of augmentation and of crops."""
    grid = F.affine_grid(theta, [images.shape[0], 1, *size], align_corners=False)
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


def _hue_draw(cfg: AugmentConfig, n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor | None:
    """A separate draw for the hue shift, after the others, so configs without hue augment as before."""
    return torch.rand(n, generator=generator, device=device, dtype=torch.float32) if cfg.hue else None


def hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) RGB -> RGB matrices rotating the hue by ``angle`` radians (YIQ chroma rotation)."""
    yiq = _YIQ.to(angle.device)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(angle.shape[0], 3, 3, device=angle.device)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    return torch.linalg.inv(yiq) @ rot @ yiq


def _jitter(
    images: torch.Tensor, cfg: AugmentConfig, u: torch.Tensor, hue_u: torch.Tensor | None = None
) -> torch.Tensor:
    """Brightness, contrast and saturation with factors uniform in [1 - a, 1 + a], then a hue rotation
    uniform in [-hue, hue] turns; clamped to [0, 1].

    Only the colour channels change (a 4th, alpha channel is kept); saturation and hue need 3 of them.
    """
    if not (cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue):
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
    if hue_u is not None and colour == 3:
        m = hue_rotation((2 * hue_u - 1) * cfg.hue * 2 * math.pi).to(x.dtype)
        x = torch.einsum("nij,njhw->nihw", m, x)
    x = x.clamp(0.0, 1.0)
    return torch.cat([x, images[:, colour:]], dim=1) if images.shape[1] > colour else x


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) luma of RGB(A) images; the image itself for one channel."""
    if x.shape[1] < 3:
        return x[:, :1]
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return _LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b


def pad_to_multiple(
    images: torch.Tensor, masks: torch.Tensor, multiple: int, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad float images (N, C, H, W) (edge pixels repeated) and masks (N, H, W) (``ignore_index``) at
    the bottom and right up to multiples of ``multiple``, so a whole image fits the network."""
    h, w = images.shape[-2:]
    ph, pw = -(-h // multiple) * multiple - h, -(-w // multiple) * multiple - w
    if not (ph or pw):
        return images, masks
    images = F.pad(images, (0, pw, 0, ph), mode="replicate")
    masks = F.pad(masks, (0, pw, 0, ph), value=ignore_index)
    return images, masks


def random_crops(
    images: torch.Tensor,
    masks: torch.Tensor,
    crop: tuple[int, int],
    cfg: AugmentConfig,
    *,
    ignore_index: int,
    generator: torch.Generator,
    class_aware: float = 0.0,
    class_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (crop_h, crop_w) crops of float images (N, C, H, W) and masks (N, H, W), jointly.

    ``cfg`` supplies the colour jitter, the flip and the scale range (rotation is not used here).
    With ``class_aware`` = p > 0, each sample with probability p is centred on a random pixel of a
    class present in it, the class drawn in proportion to ``class_weight`` (e.g. inverse pixel
    frequency), so rare classes are seen more often.
    """
    _check_pair(images, masks)
    n, (height, width), (ch, cw) = images.shape[0], images.shape[2:], crop
    device = images.device
    u = torch.rand(n, 8, generator=generator, device=device, dtype=torch.float32)
    images = _jitter(images, cfg, u[:, 5:8], _hue_draw(cfg, n, generator, device))
    lo, hi = cfg.scale
    scale = torch.exp(math.log(lo) + u[:, 1] * (math.log(hi) - math.log(lo)))
    win_h, win_w = ch / scale, cw / scale  # the window's size in source pixels
    y0 = _place(u[:, 3], win_h, height)
    x0 = _place(u[:, 4], win_w, width)
    if class_aware > 0:
        centres = _rare_centres(masks, class_aware, class_weight, ignore_index, generator)
        chosen = centres[:, 0] >= 0
        y0 = torch.where(chosen, _clamp_window(centres[:, 0] + 0.5 - win_h / 2, win_h, height), y0)
        x0 = torch.where(chosen, _clamp_window(centres[:, 1] + 0.5 - win_w / 2, win_w, width), x0)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones_like(scale)
    if cfg.scale == (1.0, 1.0):  # whole pixels: an exact copy, by indexing rather than resampling
        return _integer_crops(images, masks, y0.floor().long(), x0.floor().long(), flip < 0, crop, ignore_index)
    theta = torch.zeros(n, 2, 3, device=device, dtype=torch.float32)
    theta[:, 0, 0] = win_w / width * flip
    theta[:, 0, 2] = (2 * x0 + win_w) / width - 1
    theta[:, 1, 1] = win_h / height
    theta[:, 1, 2] = (2 * y0 + win_h) / height - 1
    return _resample(images, masks, theta, (ch, cw), ignore_index)


def _integer_crops(
    images: torch.Tensor,
    masks: torch.Tensor,
    y0: torch.Tensor,
    x0: torch.Tensor,
    flip: torch.Tensor,
    crop: tuple[int, int],
    ignore_index: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops starting at integer (y0, x0), mirrored where ``flip``; 0 / ``ignore_index`` outside the image."""
    (ch, cw), (height, width), device = crop, images.shape[2:], images.device
    rows = y0[:, None] + torch.arange(ch, device=device)
    cols = x0[:, None] + torch.arange(cw, device=device)
    cols = torch.where(flip[:, None], cols.flip(-1), cols)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    n = torch.arange(images.shape[0], device=device)[:, None, None]
    r, c = rows.clamp(0, height - 1)[:, :, None], cols.clamp(0, width - 1)[:, None, :]
    out_images = images.permute(0, 2, 3, 1)[n, r, c].permute(0, 3, 1, 2) * inside[:, None].to(images.dtype)
    out_masks = torch.where(inside, masks[n, r, c], torch.full_like(masks[n, r, c], ignore_index))
    return out_images.contiguous(), out_masks


def _place(u: torch.Tensor, window: torch.Tensor, size: int) -> torch.Tensor:
    """A window's first source pixel, uniform over the positions inside the image (window smaller) or
    over those that keep the whole image inside the window (window larger)."""
    slack = size - window
    return torch.minimum(slack, torch.zeros_like(slack)) + u * slack.abs()


def _clamp_window(start: torch.Tensor, window: torch.Tensor, size: int) -> torch.Tensor:
    slack = size - window
    return torch.maximum(torch.minimum(start, slack.clamp_min(0)), slack.clamp_max(0))


def _rare_centres(
    masks: torch.Tensor,
    p: float,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """(N, 2) pixel (y, x) to centre each sample's crop on, or -1 where the sample keeps its random place."""
    n, device = masks.shape[0], masks.device
    pick = torch.rand(n, generator=generator, device=device) < p
    out = torch.full((n, 2), -1, dtype=torch.long, device=device)
    for i in torch.nonzero(pick).flatten().tolist():
        ids = masks[i].reshape(-1).long()
        valid = ids != ignore_index
        present = torch.unique(ids[valid])
        if class_weight is not None:
            present = present[present < class_weight.numel()]
        if present.numel() == 0:
            continue
        w = (
            class_weight.to(device)[present].float()
            if class_weight is not None
            else torch.ones(len(present), device=device)
        )
        if float(w.sum()) <= 0:
            continue
        c = present[torch.multinomial(w, 1, generator=generator)]
        where = torch.nonzero(ids == c).flatten()
        flat = where[torch.randint(len(where), (1,), generator=generator, device=device)]
        out[i, 0], out[i, 1] = flat // masks.shape[2], flat % masks.shape[2]
    return out
