"""fit(): the seed recipe learns, the run folder is complete, resume is exact, options work."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_blobs, tiny_config

from unetkit import Predictor, SegmentationData, fit, load_run
from unetkit.errors import ConfigError, DataError, RunError
from unetkit.run import load_tensors
from unetkit.train import NonFiniteLoss, lr_factor


@pytest.fixture(scope="module")
def blobs() -> tuple[SegmentationData, SegmentationData]:
    images, masks = make_blobs(64, seed=1)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    return data.split(0.25, seed=0)


def test_seed_recipe_learns_and_writes_a_complete_run(tmp_path, blobs):
    train, val = blobs
    config = tiny_config(epochs=14, batch_size=4)
    config = replace(config, model=replace(config.model, n_filters=8))
    result = fit(config, tmp_path / "run", train_data=train, val_data=val, progress=False, log=None)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {
        "config.json",
        "weights.safetensors",
        "last.safetensors",
        "metrics.csv",
        "curves.png",
    }
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 14
    assert set(rows[0]) >= {"epoch", "train_loss", "val_miou", "seconds", "images_per_s"}
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[0]["train_loss"])
    assert result.best_miou == pytest.approx(max(float(r["val_miou"]) for r in rows))
    assert result.best_miou > 0.5
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())


def test_best_weights_are_the_best_epoch(tmp_path, blobs):
    train, val = blobs
    fit(tiny_config(epochs=4), tmp_path / "run", train_data=train, val_data=val, progress=False, log=None)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    best_epoch = 1 + int(np.argmax([float(r["val_miou"]) for r in rows]))
    _, meta = load_tensors(tmp_path / "run" / "weights.safetensors")
    assert meta["epoch"] == best_epoch


def _weights(run) -> dict[str, torch.Tensor]:
    tensors, _ = load_tensors(run / "last.safetensors")
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


def test_resume_continues_exactly(tmp_path, blobs):
    train, val = blobs
    full = tmp_path / "full"
    fit(tiny_config(epochs=4), full, train_data=train, val_data=val, progress=False, log=None)
    part = tmp_path / "part"
    fit(tiny_config(epochs=2), part, train_data=train, val_data=val, progress=False, log=None)
    fit(tiny_config(epochs=4), part, train_data=train, val_data=val, progress=False, log=None, resume=True)
    a, b = _weights(full), _weights(part)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    rows_a = list(csv.DictReader((full / "metrics.csv").open()))
    rows_b = list(csv.DictReader((part / "metrics.csv").open()))
    assert [r["train_loss"] for r in rows_a] == [r["train_loss"] for r in rows_b]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, blobs):
    train, val = blobs
    with pytest.raises(RunError, match="nothing to resume"):
        fit(tiny_config(), tmp_path / "none", train_data=train, resume=True, progress=False, log=None)


def test_load_run_rebuilds_model_and_config(tmp_path, blobs):
    train, val = blobs
    result = fit(tiny_config(epochs=1), tmp_path / "run", train_data=train, val_data=val, progress=False, log=None)
    run = load_run(tmp_path / "run")
    assert run.config.model.n_filters == 4 and len(run.metrics) == 1
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(run.model(x), result.model(x))


def test_one_hot_targets_through_the_python_api(tmp_path):
    images, masks = make_blobs(16)
    one_hot = np.eye(3, dtype=np.float32)[masks]
    a = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    b = SegmentationData.from_arrays(images, one_hot, (32, 32, 3), n_classes=3)
    assert torch.equal(a.masks, b.masks)
    with pytest.raises(DataError, match="one-hot"):
        SegmentationData.from_arrays(images, one_hot * 0.5, (32, 32, 3), n_classes=3)


def test_mask_values_out_of_range_rejected():
    images, masks = make_blobs(4)
    masks[0, 0, 0] = 7
    with pytest.raises(DataError, match=r"\[7\]"):
        SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    SegmentationData.from_arrays(images, np.where(masks == 7, 255, masks), (32, 32, 3), n_classes=3, ignore_index=255)


def test_ignore_index_is_left_out_of_loss(tmp_path):
    images, masks = make_blobs(16)
    masks[:, :4] = 255
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3, ignore_index=255)
    config = tiny_config(epochs=1)
    config = replace(config, data=replace(config.data, ignore_index=255))
    result = fit(config, None, train_data=data, progress=False, log=None)
    assert math.isfinite(result.history[0]["train_loss"])


def test_validation_fraction_split_is_seeded(blobs):
    train, _ = blobs
    a1, b1 = train.split(0.25, seed=3)
    a2, b2 = train.split(0.25, seed=3)
    assert torch.equal(b1.images, b2.images) and len(b1) == 12
    _, b3 = train.split(0.25, seed=4)
    assert not torch.equal(b1.images, b3.images)


def test_nan_loss_stops_with_a_message(tmp_path, blobs):
    train, val = blobs
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        fit(tiny_config(epochs=2, lr=1e30), tmp_path / "run", train_data=train, progress=False, log=None)


def _plain_and_fast_losses(train: SegmentationData, compile: str) -> tuple[list[float], list[float]]:
    """Per-epoch losses of plain fp32 eager (contiguous, native transposed conv) and of the fast path."""
    from unetkit.model import ConvTranspose2dSame

    losses = []
    try:
        for precision, channels_last, subpixel, comp in (("fp32", False, False, "off"), ("bf16", True, None, compile)):
            ConvTranspose2dSame.subpixel = subpixel  # None: the default (sub-pixel on the CPU)
            config = tiny_config(epochs=3, precision=precision, channels_last=channels_last, compile=comp)
            losses.append(
                [r["train_loss"] for r in fit(config, None, train_data=train, progress=False, log=None).history]
            )
    finally:
        ConvTranspose2dSame.subpixel = None
    return losses[0], losses[1]


def test_bf16_and_fp32_losses_agree(blobs):
    """The fast path (bf16 autocast, channels-last, sub-pixel transposed conv) trains like plain fp32 eager."""
    plain, fast = _plain_and_fast_losses(blobs[0], compile="off")
    for a, b in zip(plain, fast):
        assert a == pytest.approx(b, rel=0.05)


@pytest.mark.slow
def test_compiled_fast_path_losses_agree(blobs):
    """torch.compile (the CUDA default; inductor's C++ backend here) on top of the fast path, same tolerance."""
    plain, fast = _plain_and_fast_losses(blobs[0], compile="on")
    for a, b in zip(plain, fast):
        assert a == pytest.approx(b, rel=0.05)


def test_schedules():
    config = tiny_config(epochs=10, schedule="cosine", warmup_epochs=2)
    assert lr_factor(config, 1.0) == pytest.approx(0.5)
    assert lr_factor(config, 2.0) == pytest.approx(1.0)
    assert lr_factor(config, 10.0) == pytest.approx(0.0, abs=1e-9)
    assert lr_factor(tiny_config(), 3.3) == 1.0


def test_early_stopping(tmp_path, blobs):
    train, val = blobs
    result = fit(
        tiny_config(epochs=30, early_stopping=1, lr=1e-6),
        None,
        train_data=train,
        val_data=val,
        progress=False,
        log=None,
    )
    assert result.stopped_early and len(result.history) < 30


def test_predictor_returns_original_size(tmp_path, blobs):
    train, val = blobs
    fit(tiny_config(epochs=1), tmp_path / "run", train_data=train, progress=False, log=None)
    predictor = Predictor.from_run(tmp_path / "run")
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = predictor.predict(image)
    assert mask.shape == (50, 70) and mask.dtype == np.uint8 and mask.max() < 3
    predictor.config = replace(
        predictor.config, preprocess=replace(predictor.config.preprocess, predict_mode="sliding")
    )
    assert predictor.predict(image).shape == (50, 70)


def test_config_json_is_validated_on_load(tmp_path, blobs):
    train, _ = blobs
    fit(tiny_config(epochs=1), tmp_path / "run", train_data=train, progress=False, log=None)
    path = tmp_path / "run" / "config.json"
    data = json.loads(path.read_text())
    data["model"]["n_filters"] = "four"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="n_filters must be an integer"):
        load_run(tmp_path / "run")
