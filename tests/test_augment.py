"""Joint augmentation: image and mask stay aligned, masks keep their ids, draws come from the generator."""

from __future__ import annotations

import pytest
import torch

from unetkit.config import AugmentConfig
from unetkit.data.augment import augment_batch, effective_ignore_index

IGNORE = 255
GEOMETRIC = AugmentConfig(hflip=True, scale=(0.6, 1.6), rotate=15.0)
EVERYTHING = AugmentConfig(hflip=True, scale=(0.6, 1.6), rotate=15.0, brightness=0.3, contrast=0.3, saturation=0.3)


def blocks(
    n: int = 6,
    h: int = 48,
    w: int = 64,
    cell: int = 8,
    n_classes: int = 5,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks of cell x cell blocks of class ids, and images whose value encodes the class (id / 10)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, n_classes, (n, h // cell, w // cell), generator=g)
    masks = coarse.repeat_interleave(cell, 1).repeat_interleave(cell, 2)
    images = (masks.float() / 10).unsqueeze(1).repeat(1, 3, 1, 1)
    return images, masks


def run(
    images: torch.Tensor,
    masks: torch.Tensor,
    cfg: AugmentConfig,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return augment_batch(images, masks, cfg, ignore_index=IGNORE, generator=generator)


def test_geometry_keeps_image_and_mask_aligned() -> None:
    images, masks = blocks()
    out_x, out_y = run(images, masks, GEOMETRIC)
    assert out_x.shape == images.shape and out_y.shape == masks.shape and out_y.dtype == masks.dtype
    valid = out_y != IGNORE
    assert valid.float().mean() > 0.5
    decoded = (out_x[:, 0] * 10).round().long()
    # Bilinear images mix neighbouring classes only on block edges: nearly every kept pixel still matches.
    assert (decoded == out_y)[valid].float().mean() > 0.9
    # Every channel moved together.
    assert torch.allclose(out_x[:, 0], out_x[:, 2])


def test_masks_hold_only_original_ids_or_ignore() -> None:
    images, masks = blocks(n_classes=7)
    for seed in range(3):
        _, out_y = run(images, masks, EVERYTHING, seed)
        assert set(out_y.unique().tolist()) <= set(range(7)) | {IGNORE}
    assert (out_y == IGNORE).any()  # zooming out or rotating pads somewhere in the batch


def test_existing_ignore_pixels_stay_ignored() -> None:
    images, masks = blocks()
    masks[:, :8] = IGNORE
    _, out_y = run(images, masks, AugmentConfig(scale=(1.0, 1.0), rotate=0.0, hflip=True))
    assert (out_y[:, :8] == IGNORE).all()


def test_same_generator_state_same_result_and_different_seeds_differ() -> None:
    images, masks = blocks()
    a = run(images, masks, EVERYTHING, seed=3)
    b = run(images, masks, EVERYTHING, seed=3)
    c = run(images, masks, EVERYTHING, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_flip_flips_exactly() -> None:
    images, masks = blocks(n=16)
    out_x, out_y = run(images, masks, AugmentConfig(hflip=True))
    flipped = torch.tensor([torch.equal(out_y[i], masks[i].flip(-1)) for i in range(16)])
    kept = torch.tensor([torch.equal(out_y[i], masks[i]) for i in range(16)])
    assert (flipped | kept).all() and flipped.any() and kept.any()
    for i in range(16):
        expect = images[i].flip(-1) if flipped[i] else images[i]
        assert torch.equal(out_x[i], expect)


def test_noop_config_returns_inputs_unchanged() -> None:
    images, masks = blocks()
    out_x, out_y = run(images, masks, AugmentConfig())
    assert out_x is images and out_y is masks


def test_jitter_changes_image_only() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 16, 16)
    masks = torch.randint(0, 3, (4, 16, 16))
    out_x, out_y = run(images, masks, AugmentConfig(brightness=0.4, contrast=0.4, saturation=0.4))
    assert torch.equal(out_y, masks)
    assert not torch.allclose(out_x, images)
    assert out_x.min() >= 0 and out_x.max() <= 1


def test_saturation_skips_grayscale_and_keeps_alpha() -> None:
    gray = torch.rand(2, 1, 8, 8)
    out, _ = run(gray, torch.zeros(2, 8, 8, dtype=torch.long), AugmentConfig(saturation=0.5))
    assert torch.equal(out, gray)
    rgba = torch.rand(2, 4, 8, 8)
    out, _ = run(rgba, torch.zeros(2, 8, 8, dtype=torch.long), AugmentConfig(brightness=0.5, saturation=0.5))
    assert torch.equal(out[:, 3], rgba[:, 3]) and not torch.equal(out[:, :3], rgba[:, :3])


def test_zoom_out_pads_image_with_zero_and_mask_with_ignore() -> None:
    images = torch.ones(2, 1, 32, 32)
    masks = torch.ones(2, 32, 32, dtype=torch.long)
    out_x, out_y = run(images, masks, AugmentConfig(scale=(0.5, 0.5)))
    pad = out_y == IGNORE
    assert 0.6 < pad.float().mean() < 0.9  # a quarter of the frame keeps the image
    # Bilinear sampling blends at most half a pixel across the edge that nearest neighbour draws.
    assert (out_x[:, 0][pad] <= 0.5 + 1e-5).all() and out_x[:, 0][pad].mean() < 0.05
    assert (out_x[:, 0][~pad] >= 0.5 - 1e-5).all()


def test_effective_ignore_index() -> None:
    assert effective_ignore_index(None, AugmentConfig(), 3) is None
    assert effective_ignore_index(None, AugmentConfig(hflip=True), 3) is None  # a flip never pads
    assert effective_ignore_index(None, GEOMETRIC, 3) == 255
    assert effective_ignore_index(None, GEOMETRIC, 300) == 300
    assert effective_ignore_index(7, GEOMETRIC, 3) == 7


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        run(torch.zeros(2, 3, 8, 8), torch.zeros(2, 8, 9, dtype=torch.long), GEOMETRIC)


def test_training_with_padding_augmentation_and_no_ignore_index() -> None:
    """fit() must ignore the padded 255s when the data declares no ignore index (else CE would fail)."""
    from conftest import make_blobs, tiny_config

    from unetkit.data.loader import SegmentationData
    from unetkit.train import fit

    images, masks = make_blobs(8)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    config = tiny_config(epochs=1, augment=AugmentConfig(hflip=True, scale=(0.5, 1.0), rotate=10.0))
    assert config.data.ignore_index is None
    result = fit(config, None, train_data=data, val_data=data, progress=False, log=None)
    assert result.history[0]["train_loss"] > 0


PASTE = AugmentConfig(copy_paste=1.0, paste_classes=(3,))


def test_copy_paste_moves_only_the_paste_classes_with_their_pixels() -> None:
    images, masks = blocks(n=6, n_classes=5, seed=1)
    out_x, out_y = run(images, masks, PASTE)
    changed = out_y != masks
    assert changed.any()
    assert (out_y[changed] == 3).all()  # only pasted class pixels replace others
    decoded = (out_x[:, 0] * 10).round().long()
    assert torch.equal(decoded, out_y)  # every pasted pixel brought its image value along
    kept = (masks != 3) & (out_y != 3)
    assert torch.equal(out_x[:, 0][kept], images[:, 0][kept])  # the rest of each sample is untouched
    # every sample got the class-3 pixels of one other sample (maybe mirrored): it holds at least as many
    got = (out_y == 3).sum(dim=(1, 2))
    sources = torch.stack([(m == 3).sum() for m in masks])
    assert (got >= sources).all() and got.sum() > sources.sum()


def test_copy_paste_chance_and_draw_order() -> None:
    images, masks = blocks(n=8, n_classes=5, seed=2)
    none = AugmentConfig(copy_paste=0.0, paste_classes=(3,))
    assert run(images, masks, none)[0] is images  # chance 0: nothing drawn, the inputs themselves
    flip = AugmentConfig(hflip=True)
    flipped = run(images, masks, flip)
    both = run(images, masks, AugmentConfig(hflip=True, copy_paste=1.0, paste_classes=(3,)))
    # copy-paste draws after the flip: the flips are the same, the pasted pixels are on top of them
    keep = flipped[1] == both[1]
    assert keep.float().mean() > 0.5 and torch.equal(flipped[0][:, 0][keep], both[0][:, 0][keep])
    single = blocks(n=1, n_classes=5)
    assert torch.equal(run(*single, PASTE)[1], single[1])  # a batch of one has no other sample


def test_copy_paste_config_checks() -> None:
    from unetkit.config import ConfigError, ModelConfig, RunConfig, TrainConfig

    with pytest.raises(ConfigError, match="paste_classes"):
        AugmentConfig(copy_paste=0.5)
    with pytest.raises(ConfigError, match="probability"):
        AugmentConfig(copy_paste=1.5, paste_classes=(1,))
    with pytest.raises(ConfigError, match=r"class ids in \[0, 2\]"):
        RunConfig(
            model=ModelConfig(n_classes=3), train=TrainConfig(augment=AugmentConfig(copy_paste=1, paste_classes=(3,)))
        )
