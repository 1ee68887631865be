"""Random crops at native size (padding with the ignore index, class-aware placement), hue jitter, padding."""

from __future__ import annotations

import math

import pytest
import torch

from unetkit.config import AugmentConfig
from unetkit.data.augment import _YIQ, augment_batch, hue_rotation, pad_to_multiple, random_crops

IGNORE = 255


def coords(n: int = 4, h: int = 30, w: int = 45) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose channels hold each pixel's row and column (so a crop's origin can be read back)."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    images = torch.stack([yy, xx, yy * 0]).float().unsqueeze(0).repeat(n, 1, 1, 1)
    masks = ((yy // 5 + xx // 5) % 4).unsqueeze(0).repeat(n, 1, 1)
    return images, masks


def crops(images, masks, crop, cfg, seed=0, **kw):
    return random_crops(
        images, masks, crop, cfg, ignore_index=IGNORE, generator=torch.Generator().manual_seed(seed), **kw
    )


def test_crop_at_scale_one_is_an_exact_slice() -> None:
    images, masks = coords()
    out_x, out_y = crops(images, masks, (16, 32), AugmentConfig())
    assert out_x.shape == (4, 3, 16, 32) and out_y.shape == (4, 16, 32) and out_y.dtype == masks.dtype
    origins = set()
    for i in range(4):
        y, x = int(out_x[i, 0, 0, 0]), int(out_x[i, 1, 0, 0])
        origins.add((y, x))
        assert 0 <= y <= 30 - 16 and 0 <= x <= 45 - 32
        assert torch.equal(out_x[i], images[i, :, y : y + 16, x : x + 32])
        assert torch.equal(out_y[i], masks[i, y : y + 16, x : x + 32])
    assert len(origins) > 1  # the samples are placed at random


def test_flipped_crop_is_a_mirrored_slice() -> None:
    images, masks = coords(n=8)
    out_x, out_y = crops(images, masks, (16, 16), AugmentConfig(hflip=True))
    flipped = 0
    for i in range(8):
        y, x_right = int(out_x[i, 0, 0, 0]), int(out_x[i, 1, 0, 0])
        if out_x[i, 1, 0, 1] < out_x[i, 1, 0, 0]:  # columns decrease: a mirrored crop
            flipped += 1
            x = x_right - 15
            assert torch.equal(out_x[i], images[i, :, y : y + 16, x : x + 16].flip(-1))
            assert torch.equal(out_y[i], masks[i, y : y + 16, x : x + 16].flip(-1))
    assert 0 < flipped < 8


def test_crop_larger_than_the_image_pads_with_ignore() -> None:
    images, masks = coords(n=3, h=20, w=24)
    out_x, out_y = crops(images + 1, masks, (32, 32), AugmentConfig())
    for i in range(3):
        assert int((out_y[i] == IGNORE).sum()) == 32 * 32 - 20 * 24  # everything outside the image
        assert torch.equal(out_y[i] == IGNORE, out_x[i, 2] == 0)  # image padded with 0 exactly there
        inside = out_y[i] != IGNORE
        assert set(out_y[i][inside].unique().tolist()) <= {0, 1, 2, 3}


def test_scaled_crops_keep_image_and_mask_aligned() -> None:
    h, w, cell = 48, 64, 8
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 5, (6, h // cell, w // cell), generator=g).repeat_interleave(cell, 1)
    masks = masks.repeat_interleave(cell, 2)
    images = (masks.float() / 10).unsqueeze(1).repeat(1, 3, 1, 1)
    out_x, out_y = crops(images, masks, (32, 32), AugmentConfig(hflip=True, scale=(0.5, 2.0)))
    valid = out_y != IGNORE
    decoded = (out_x[:, 0] * 10).round().long()
    assert (decoded == out_y)[valid].float().mean() > 0.9
    assert set(out_y.unique().tolist()) <= set(range(5)) | {IGNORE}
    again = crops(images, masks, (32, 32), AugmentConfig(hflip=True, scale=(0.5, 2.0)))
    assert torch.equal(again[1], out_y)  # same generator state, same crops


def test_class_aware_crops_contain_the_rare_class() -> None:
    images, masks = coords(n=16, h=64, w=64)
    masks = torch.zeros_like(masks)
    masks[:, 50, 7] = 3  # one pixel of a rare class per image
    weight = torch.tensor([1e-4, 1.0, 1.0, 1.0])  # inverse frequency: class 0 is everywhere
    _, out_y = crops(images, masks, (16, 16), AugmentConfig(), class_aware=1.0, class_weight=weight)
    assert all((out_y[i] == 3).any() for i in range(16))
    _, plain = crops(images, masks, (16, 16), AugmentConfig())
    assert sum(bool((plain[i] == 3).any()) for i in range(16)) < 16


def test_hue_rotation_keeps_luma_and_greys() -> None:
    angle = torch.tensor([0.7, -2.0])
    m = hue_rotation(angle)
    torch.testing.assert_close(m @ hue_rotation(-angle), torch.eye(3).expand(2, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(_YIQ[0] @ m, _YIQ[0].expand(2, 3), atol=1e-5, rtol=0)  # luma unchanged
    grey = torch.full((2, 3, 4, 4), 0.4)
    colour = torch.tensor([0.6, 0.4, 0.3]).view(1, 3, 1, 1).repeat(2, 1, 4, 4)
    cfg = AugmentConfig(hue=0.5)
    g = torch.Generator().manual_seed(0)
    out_grey, _ = augment_batch(grey, torch.zeros(2, 4, 4, dtype=torch.long), cfg, ignore_index=IGNORE, generator=g)
    torch.testing.assert_close(out_grey, grey, atol=1e-5, rtol=0)
    out, _ = augment_batch(colour, torch.zeros(2, 4, 4, dtype=torch.long), cfg, ignore_index=IGNORE, generator=g)
    assert not torch.allclose(out, colour, atol=1e-2)
    luma = torch.einsum("c,nchw->nhw", _YIQ[0], out)
    torch.testing.assert_close(
        luma, torch.full_like(luma, float(_YIQ[0] @ torch.tensor([0.6, 0.4, 0.3]))), atol=0.02, rtol=0
    )
    with pytest.raises(Exception, match="hue"):
        AugmentConfig(hue=0.6)
    assert math.isclose(float(hue_rotation(torch.tensor([0.0]))[0].trace()), 3.0, abs_tol=1e-5)


def test_pad_to_multiple() -> None:
    images, masks = coords(n=2, h=30, w=45)
    px, py = pad_to_multiple(images, masks, 16, IGNORE)
    assert px.shape[-2:] == (32, 48) and py.shape[-2:] == (32, 48)
    assert torch.equal(px[..., :30, :45], images) and torch.equal(py[..., :30, :45], masks)
    assert (py[:, 30:] == IGNORE).all() and (py[:, :, 45:] == IGNORE).all()
    same = pad_to_multiple(px, py, 16, IGNORE)
    assert same[0] is px and same[1] is py
