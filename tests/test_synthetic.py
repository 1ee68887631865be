"""The built-in procedural driving scenes: determinism, shapes, classes, files, not trivially learnable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unetkit.data.synthetic import CLASS_NAMES, N_CLASSES, PALETTE, make_dataset, make_scene, write_dataset


@pytest.fixture(scope="module")
def scenes() -> tuple[np.ndarray, np.ndarray]:
    """50 scenes at the tutorial's size, shared by the statistics tests."""
    return make_dataset(50, 96, 128, seed=0)


def test_same_seed_and_index_give_identical_scenes() -> None:
    a_img, a_mask = make_scene(3, 7)
    b_img, b_mask = make_scene(3, 7)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_mask, b_mask)


def test_other_index_or_seed_gives_another_scene() -> None:
    img, mask = make_scene(3, 7)
    for other in (make_scene(3, 8), make_scene(4, 7)):
        assert not np.array_equal(img, other[0])
        assert (mask != other[1]).mean() > 0.05


def test_scenes_do_not_depend_on_generation_order() -> None:
    images, masks = make_dataset(3, 48, 64, seed=5, start=10)
    make_scene(5, 99, 48, 64)  # no hidden state carried from one scene to the next
    for n in range(3):
        img, mask = make_scene(5, 10 + n, 48, 64)
        np.testing.assert_array_equal(images[n], img)
        np.testing.assert_array_equal(masks[n], mask)


@pytest.mark.parametrize("size", [(96, 128), (1, 1), (7, 5), (37, 53), (61, 200), (200, 61), (150, 150)])
def test_shapes_dtypes_and_class_ids(size: tuple[int, int]) -> None:
    h, w = size
    img, mask = make_scene(0, 1, h, w)
    assert img.shape == (h, w, 3) and img.dtype == np.uint8
    assert mask.shape == (h, w) and mask.dtype == np.uint8
    assert int(mask.max()) < N_CLASSES


def test_large_scene() -> None:
    img, mask = make_scene(0, 2, 512, 1024)
    assert img.shape == (512, 1024, 3) and mask.shape == (512, 1024)
    assert len(np.unique(mask)) >= 8


def test_layout_is_the_same_at_every_size() -> None:
    """Only the pixel noise depends on the size: the street is the same."""
    _, small = make_scene(0, 4, 96, 128)
    _, large = make_scene(0, 4, 192, 256)
    assert (small == large[::2, ::2]).mean() > 0.9


def test_make_dataset_shapes() -> None:
    images, masks = make_dataset(4, 40, 56, seed=2)
    assert images.shape == (4, 40, 56, 3) and images.dtype == np.uint8
    assert masks.shape == (4, 40, 56) and masks.dtype == np.uint8
    empty_images, empty_masks = make_dataset(0)
    assert empty_images.shape == (0, 96, 128, 3) and empty_masks.shape == (0, 96, 128)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        make_scene(0, 0, 0, 10)
    with pytest.raises(ValueError):
        make_scene(-1, 0)
    with pytest.raises(ValueError):
        make_dataset(-1)


def test_palette_and_class_names() -> None:
    assert N_CLASSES == len(CLASS_NAMES) == len(PALETTE)
    assert 8 <= N_CLASSES <= 16
    assert CLASS_NAMES[0] == "unlabeled"
    assert len(set(CLASS_NAMES)) == N_CLASSES
    for rgb in PALETTE:
        assert isinstance(rgb, list) and len(rgb) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in rgb)
    assert len({tuple(rgb) for rgb in PALETTE}) == N_CLASSES


def test_every_class_is_common_and_void_is_rare(scenes: tuple[np.ndarray, np.ndarray]) -> None:
    _, masks = scenes
    present = np.array([np.bincount(m.ravel(), minlength=N_CLASSES) > 0 for m in masks]).mean(axis=0)
    for c in range(1, N_CLASSES):
        assert present[c] >= 0.3, f"{CLASS_NAMES[c]} appears in only {present[c]:.0%} of the scenes"
    freq = np.bincount(masks.ravel(), minlength=N_CLASSES) / masks.size
    assert freq[0] < 0.03  # unlabeled
    for name in ("sky", "road", "building"):
        assert freq[CLASS_NAMES.index(name)] > 0.08
    assert np.mean([len(np.unique(m)) for m in masks]) >= 8  # several classes per scene


def test_images_are_varied(scenes: tuple[np.ndarray, np.ndarray]) -> None:
    images, _ = scenes
    means = images.reshape(len(images), -1).mean(axis=1)
    assert means.std() > 10  # exposure and time of day vary
    assert images.std(axis=(1, 2)).mean() > 15  # every image has contrast


def test_per_pixel_colour_is_not_enough(scenes: tuple[np.ndarray, np.ndarray]) -> None:
    """Classes overlap in colour: per-pixel colour classifiers fitted on 20 scenes fail on 20 others."""
    images, masks = scenes
    fit_x, fit_y = images[:20].reshape(-1, 3).astype(np.float64), masks[:20].ravel()
    test_x, test_y = images[20:40].reshape(-1, 3).astype(np.float64), masks[20:40].ravel()
    seen = np.unique(fit_y)
    means = np.stack([fit_x[fit_y == c].mean(axis=0) for c in seen])
    nearest = seen[np.argmin((means**2).sum(axis=1)[None, :] - 2 * test_x @ means.T, axis=1)]
    assert (nearest == test_y).mean() < 0.7

    # a colour lookup table (16 levels per channel -> most frequent class) is the stronger baseline
    def code(x: np.ndarray) -> np.ndarray:
        q = x.astype(np.int64) // 16
        return q[:, 0] * 256 + q[:, 1] * 16 + q[:, 2]

    table = np.zeros((4096, N_CLASSES))
    np.add.at(table, (code(fit_x), fit_y), 1)
    assert (table.argmax(axis=1)[code(test_x)] == test_y).mean() < 0.75


def test_write_dataset(tmp_path) -> None:
    out = write_dataset(tmp_path / "scenes", 3, 40, 56, seed=1)
    assert out == tmp_path / "scenes"
    names = sorted(p.name for p in (out / "image").iterdir())
    assert names == ["scene_00000.png", "scene_00001.png", "scene_00002.png"]
    assert sorted(p.name for p in (out / "mask").iterdir()) == names
    for n, name in enumerate(names):
        img, mask = make_scene(1, n, 40, 56)
        with Image.open(out / "image" / name) as im:
            assert im.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(im), img)
        with Image.open(out / "mask" / name) as im:
            assert im.mode in ("P", "L")
            np.testing.assert_array_equal(np.asarray(im), mask)  # pixel values are class ids
    classes = json.loads((out / "classes.json").read_text())
    assert list(classes) == CLASS_NAMES
    assert list(classes.values()) == PALETTE


def test_write_dataset_masks_read_back_through_the_toolkit(tmp_path) -> None:
    io = pytest.importorskip("unetkit.data.io")
    out = write_dataset(tmp_path, 1, 24, 32)
    raw = io.read_mask(out / "mask" / "scene_00000.png")
    np.testing.assert_array_equal(raw, make_scene(0, 0, 24, 32)[1])


def test_no_global_random_state_is_used() -> None:
    np.random.seed(0)
    before = np.random.random()
    np.random.seed(0)
    make_scene(0, 0, 24, 32)
    assert np.random.random() == before
