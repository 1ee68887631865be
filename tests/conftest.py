"""Shared fixtures: tiny learnable data sets written to disk, and a tiny model config."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MEMBRANE = REPO.parent / "shared" / "data" / "membrane"

torch.set_num_threads(1)  # tiny models: one thread is fastest, and steadiest on a shared machine


def make_blobs(
    count: int,
    size: tuple[int, int] = (32, 32),
    n_classes: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images with a bright square (class 1) and a dark disc (class 2) on noise (class 0)."""
    rng = np.random.default_rng(seed)
    h, w = size
    images = rng.integers(90, 160, size=(count, h, w, 3), dtype=np.uint8)
    masks = np.zeros((count, h, w), dtype=np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for i in range(count):
        y, x, s = rng.integers(0, h // 2), rng.integers(0, w // 2), rng.integers(h // 5, h // 3)
        masks[i, y : y + s, x : x + s] = 1
        if n_classes > 2:
            cy, cx, r = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4), rng.integers(3, h // 5)
            masks[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    images[masks == 1] = 230
    if n_classes > 2:
        images[masks == 2] = 20
    return images, masks


def write_folder(root: Path, images: np.ndarray, masks: np.ndarray, mask_scale: int = 1) -> tuple[Path, Path]:
    img_dir, mask_dir = root / "images", root / "masks"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    for i, (im, m) in enumerate(zip(images, masks)):
        Image.fromarray(im).save(img_dir / f"img{i}.png")
        Image.fromarray((m * mask_scale).astype(np.uint8)).save(mask_dir / f"img{i}.png")
    return img_dir, mask_dir


@pytest.fixture
def blob_folders(tmp_path: Path) -> tuple[Path, Path]:
    images, masks = make_blobs(24)
    return write_folder(tmp_path / "data", images, masks)


def tiny_config(**train):
    from unetkit.config import ModelConfig, RunConfig, TrainConfig

    settings = dict(epochs=2, batch_size=8, precision="fp32", compile="off", device="cpu")
    settings.update(train)
    return RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3), train=TrainConfig(**settings))


@pytest.fixture
def two_threads() -> Iterator[None]:
    """torch on two threads for the test (the data-parallel ONNX sessions split a batch between them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)
