"""Images beyond 8-bit RGB: 16-bit precision, multi-band TIFFs, --normalize; train, predict, export agree."""

from __future__ import annotations

import importlib.util
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_blobs, tiny_config
from PIL import Image

from unetkit import Predictor, fit
from unetkit.config import PreprocessConfig, RunConfig
from unetkit.data.io import read_image
from unetkit.errors import ConfigError, DataError
from unetkit.preprocess import normalization_stats, preprocess_image, to_float


def _write_16bit(root, n=8, size=16):
    images, masks = make_blobs(n, size=(size, size), n_classes=2, seed=5)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, (im, m) in enumerate(zip(images, masks)):
        gray = im[:, :, 0].astype(np.uint16) * 16 + 3  # 12-bit data: values up to ~4083, low bits set
        Image.fromarray(gray).save(root / "images" / f"{i}.png")
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    return root / "images", root / "masks"


def _write_bands(root, n=8, size=16, bands=6):
    tifffile = pytest.importorskip("tifffile")
    images, masks = make_blobs(n, size=(size, size), n_classes=2, seed=6)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i, (im, m) in enumerate(zip(images, masks)):
        cube = np.stack([im[:, :, 0].astype(np.uint16) * (b + 1) + rng.integers(0, 3) for b in range(bands)], -1)
        tifffile.imwrite(root / "images" / f"{i}.tif", cube, photometric="minisblack", planarconfig="contig")
        Image.fromarray(m).save(root / "masks" / f"{i}.png")
    return root / "images", root / "masks"


def _config(images, masks, channels, normalize="scale"):
    config = tiny_config(epochs=1, batch_size=4)
    return replace(
        config,
        model=replace(config.model, input_size=(16, 16, channels), n_classes=2, depth=3),
        preprocess=replace(config.preprocess, normalize=normalize),
        data=replace(config.data, images=str(images), masks=str(masks), mask_mode="index", cache="memory"),
        class_names=None,
        palette=None,
    )


def test_16bit_values_survive_the_preprocessing_path(tmp_path):
    a = np.array([[0, 1], [4095, 65535]], np.uint16)
    Image.fromarray(a).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    x = preprocess_image(image, (2, 2, 1))
    assert x.dtype == torch.int32 and x.flatten().tolist() == [0, 1, 4095, 65535]
    np.testing.assert_allclose(to_float(x).flatten().numpy(), [0, 1 / 65535, 4095 / 65535, 1.0], rtol=1e-6)


def test_normalization_stats_and_to_float():
    x = torch.tensor([[[[0, 10], [20, 30]], [[100, 100], [100, 300]]]], dtype=torch.int32)  # (1, 2, 2, 2)
    s = normalization_stats(x, "mean-std")
    assert s["mean"] == pytest.approx([15.0, 150.0]) and s["std"] == pytest.approx(
        [np.std([0, 10, 20, 30]), 86.6025], rel=1e-4
    )
    p = PreprocessConfig(normalize="mean-std", **{k: v for k, v in s.items() if k != "max_value"})
    y = to_float(x, p)
    assert y[0, 0].mean().item() == pytest.approx(0.0, abs=1e-6) and y[0, 1].std(
        unbiased=False
    ).item() == pytest.approx(1.0)
    s = normalization_stats(x, "percentile")
    p = PreprocessConfig(normalize="percentile", low=s["low"], high=s["high"])
    y = to_float(x, p)
    assert y.min() >= 0 and y.max() <= 1 and s["low"][0] == pytest.approx(0.3) and s["high"][0] == pytest.approx(29.7)


def test_16bit_trains_predicts_and_keeps_its_statistics(tmp_path):
    images, masks = _write_16bit(tmp_path / "d")
    fit(_config(images, masks, 1, "percentile"), tmp_path / "run", progress=False, log=None)
    config = RunConfig.load(tmp_path / "run" / "config.json")
    assert config.preprocess.normalize == "percentile" and config.preprocess.max_value == 65535
    assert 3 <= config.preprocess.low[0] < config.preprocess.high[0] <= 4083
    predictor = Predictor.from_run(tmp_path / "run", device="cpu")
    image = read_image(images / "0.png")
    mask = predictor.predict(image)
    assert mask.shape == (16, 16)
    # the predictor normalises exactly as the stored statistics say
    x = preprocess_image(image, (16, 16, 1))
    expected = predictor.model(to_float(x, config.preprocess)).argmax(1)[0].numpy()
    np.testing.assert_array_equal(mask, expected)
    from unetkit.predict_files import predict_files

    predict_files(tmp_path / "run", [str(images / "0.png")], tmp_path / "pred", device="cpu")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "pred" / "0.png")), mask)
    assert (tmp_path / "pred" / "0_overlay.png").is_file()
    if importlib.util.find_spec("onnxruntime") is not None:
        from unetkit.export import OnnxPredictor, export_onnx

        export_onnx(tmp_path / "run", tmp_path / "m.onnx")
        np.testing.assert_array_equal(OnnxPredictor(tmp_path / "m.onnx").predict(image), mask)


def test_six_band_tiffs_train_predict_and_export(tmp_path):
    pytest.importorskip("onnxruntime")
    images, masks = _write_bands(tmp_path / "d")
    assert read_image(images / "0.tif").shape == (16, 16, 6)
    fit(_config(images, masks, 6, "mean-std"), tmp_path / "run", progress=False, log=None)
    config = RunConfig.load(tmp_path / "run" / "config.json")
    assert len(config.preprocess.mean) == 6 and config.model.input_size == (16, 16, 6)
    from unetkit.export import OnnxPredictor, export_onnx

    export_onnx(tmp_path / "run", tmp_path / "m.onnx")
    torch_pred = Predictor.from_run(tmp_path / "run", device="cpu").predict(read_image(images / "1.tif"))
    onnx_pred = OnnxPredictor(tmp_path / "m.onnx").predict(read_image(images / "1.tif"))
    np.testing.assert_array_equal(torch_pred, onnx_pred)


def test_band_count_mismatch_and_jitter_with_mean_std(tmp_path):
    images, _ = _write_bands(tmp_path / "d", n=1)
    with pytest.raises(DataError, match="6 bands but the model takes 3"):
        preprocess_image(read_image(images / "0.tif"), (16, 16, 3))
    config = tiny_config()
    with pytest.raises(ConfigError, match="colour augmentation"):
        RunConfig(
            preprocess=PreprocessConfig(normalize="mean-std"),
            train=replace(config.train, augment=replace(config.train.augment, brightness=0.2)),
        )


def test_predict_files_draws_overlays_of_16_bit_and_multi_band_images(tmp_path):
    from unetkit.plots import overlay

    a16 = np.linspace(0, 4000, 16 * 16).reshape(16, 16, 1).astype(np.uint16)
    out = overlay(a16, np.zeros((16, 16), np.uint8), [[0, 0, 0]], alpha=0.0)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255  # stretched, not clipped to white
    bands = np.zeros((4, 4, 6), np.uint8)
    bands[..., 1] = 200
    assert overlay(bands, np.zeros((4, 4), np.uint8), [[0, 0, 0]], alpha=0.0)[0, 0].tolist() == [0, 200, 0]
