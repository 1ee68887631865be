"""Training options for accuracy: the loss choices, per-class validation IoU, EMA, the time budget, crops."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import make_blobs, tiny_config, write_folder
from typer.testing import CliRunner

from unetkit import SegmentationData, fit
from unetkit.cli import app
from unetkit.config import LOSSES, AugmentConfig, TrainConfig
from unetkit.errors import ConfigError
from unetkit.losses import LOSS_KINDS
from unetkit.run import build_model, read_metrics


@pytest.fixture(scope="module")
def blobs() -> tuple[SegmentationData, SegmentationData]:
    images, masks = make_blobs(20)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    return data.split(0.2, seed=0)


def test_config_loss_choices_are_the_losses_module_kinds() -> None:
    assert LOSSES == LOSS_KINDS
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ConfigError, match="ohem_thresh"):
        TrainConfig(ohem_thresh=0.0)


def test_fit_uses_the_configured_loss(blobs) -> None:
    train, _ = blobs
    losses = {}
    for kind in ("ce", "ohem+lovasz"):
        config = tiny_config(epochs=1, loss=kind, label_smoothing=0.1, ohem_min_kept=64)
        losses[kind] = fit(config, None, train_data=train, progress=False, log=None).history[0]["train_loss"]
    assert losses["ce"] != pytest.approx(losses["ohem+lovasz"], rel=1e-3)


def test_cli_loss_options_reach_the_config(tmp_path: Path) -> None:
    images, masks = write_folder(tmp_path / "data", *make_blobs(8))
    args = ["train", "--images", images, "--masks", masks, "--n-classes", "3", "--epochs", "1", "--out", tmp_path / "r"]
    args += ["--input-size", "32", "32", "--n-filters", "4", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    args += ["--loss", "focal+dice", "--focal-gamma", "1.5", "--label-smoothing", "0.05", "--ohem-min-kept", "9"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    t = json.loads((tmp_path / "r" / "config.json").read_text())["train"]
    assert (t["loss"], t["focal_gamma"], t["label_smoothing"], t["ohem_min_kept"]) == ("focal+dice", 1.5, 0.05, 9)


def test_ema_equals_the_closed_form_after_k_steps() -> None:
    import torch
    from torch import nn

    from unetkit.ema import ModelEMA

    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    d, k = 0.9, 5
    ema = ModelEMA(model, d, warmup=False)
    seen = []
    for step in range(1, k + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(float(step))  # the weights after step t: w_0 + t(t+1)/2
        model[1].num_batches_tracked += 1
        seen.append({n: v.clone() for n, v in model.state_dict().items()})
        ema.update(model)
    for name, value in ema.state_dict().items():
        if not value.dtype.is_floating_point:
            assert torch.equal(value, seen[-1][name])  # integer buffers are copied
            continue
        closed = d**k * w0[name] + (1 - d) * sum(d ** (k - t) * seen[t - 1][name] for t in range(1, k + 1))
        torch.testing.assert_close(value, closed)
    assert ema.updates == k and not any(p.requires_grad for p in ema.module.parameters())


def test_ema_warmup_decay_and_bad_decay() -> None:
    from torch import nn

    from unetkit.ema import ModelEMA

    ema = ModelEMA(nn.Linear(2, 2), 0.999)
    assert ema.current_decay() == pytest.approx(2 / 11)  # (1 + k) / (10 + k) at k = 1
    ema.updates = 100_000
    assert ema.current_decay() == 0.999
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ConfigError, match="--ema"):
            ModelEMA(nn.Linear(2, 2), bad)


def test_parse_duration() -> None:
    from unetkit.timebudget import parse_duration

    assert parse_duration("10m") == 600 and parse_duration("90s") == 90 and parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400 and parse_duration("600") == 600 and parse_duration(42) == 42
    for bad in ("ten minutes", "0", "-5m", "5d"):
        with pytest.raises(ConfigError, match="--time-budget"):
            parse_duration(bad)


def test_time_budget_schedule_and_accounting(monkeypatch) -> None:
    from unetkit import timebudget

    now = [100.0]
    monkeypatch.setattr(timebudget, "clock", lambda: now[0])
    budget = timebudget.TimeBudget(60).start()
    assert budget.lr_factor(True, 0.25) == 0.25  # warm-up: the epoch-based ramp
    now[0] += 10
    assert budget.lr_factor(False, 1.0) == pytest.approx(1.0)  # warm-up ended at 10 s
    now[0] += 25  # halfway through the 50 s after the warm-up
    assert budget.lr_factor(False, 1.0) == pytest.approx(0.5)
    assert not budget.exhausted(reserve=20) and budget.exhausted(reserve=26)
    resumed = timebudget.TimeBudget(60, budget.state()).start()  # resume: the spent time carries over
    assert resumed.elapsed == pytest.approx(35) and resumed.warmup_ended_at == pytest.approx(10)
    now[0] += 25
    assert resumed.exhausted() and resumed.lr_factor(False, 1.0) == pytest.approx(0.0)


def test_cli_augmentation_options(tmp_path: Path) -> None:
    images, masks = write_folder(tmp_path / "data", *make_blobs(8))
    args = ["train", "--images", images, "--masks", masks, "--n-classes", "3", "--epochs", "1", "--out", tmp_path / "r"]
    args += ["--input-size", "32", "32", "--n-filters", "4", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    args += ["--aug-scale", "0.5", "2.0", "--aug-colour", "0.3", "--aug-hue", "0.05"]
    args += ["--copy-paste", "0.5", "--paste-classes", "class_2,1"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    a = json.loads((tmp_path / "r" / "config.json").read_text())["train"]["augment"]
    assert a["scale"] == [0.5, 2.0] and a["brightness"] == a["contrast"] == a["saturation"] == 0.3
    assert a["hue"] == 0.05 and a["hflip"] is False
    assert a["copy_paste"] == 0.5 and a["paste_classes"] == [2, 1]
    bad = [str(x) for x in args[:-1]] + ["walker", "--overwrite"]
    result = CliRunner().invoke(app, bad)
    assert result.exit_code != 0 and "unknown class 'walker'" in result.output and "class_2" in result.output


def test_copy_paste_with_crop_training(tmp_path: Path) -> None:
    """Copy-paste also runs after the crops of crop training (a sample takes the objects of another crop)."""
    images, masks = make_blobs(8)
    data = SegmentationData.from_arrays(images, masks, (32, 32, 3), n_classes=3)
    augment = AugmentConfig(copy_paste=1.0, paste_classes=(1, 2))
    config = tiny_config(epochs=1, augment=augment, batch_size=4)
    config = replace(
        config, model=replace(config.model, input_size=(16, 16, 3)), train=replace(config.train, crop=(16, 16))
    )
    result = fit(config, None, train_data=data, val_data=data, progress=False, log=None)
    assert result.history[0]["train_loss"] > 0


def test_metrics_csv_has_per_class_validation_iou(tmp_path: Path, blobs) -> None:
    import csv

    from PIL import Image

    from unetkit.plots import plot_curves
    from unetkit.run import read_metrics

    train, val = blobs
    fit(tiny_config(epochs=2), tmp_path / "run", train_data=train, val_data=val, progress=False, log=None)
    with (tmp_path / "run" / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    per_class = ["val_iou_class_0", "val_iou_class_1", "val_iou_class_2"]
    assert header[-5:] == ["val_mean_accuracy", "val_fw_iou", *per_class]
    for row in read_metrics(tmp_path / "run" / "metrics.csv"):
        ious = [row[k] for k in per_class if row[k] is not None]
        assert row["val_miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-5)
        assert 0 <= row["val_mean_accuracy"] <= 1 and 0 <= row["val_fw_iou"] <= 1
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    plot_curves(rows, tmp_path / "with.png")
    plot_curves([{k: v for k, v in r.items() if k not in per_class} for r in rows], tmp_path / "without.png")
    assert Image.open(tmp_path / "with.png").size[0] > Image.open(tmp_path / "without.png").size[0]  # 4th panel


def test_metrics_csv_keeps_extra_columns_and_blanks_nan(tmp_path: Path) -> None:
    from unetkit.run import read_metrics, write_metrics

    write_metrics(tmp_path / "m.csv", [{"epoch": 1, "train_loss": 0.5, "val_iou_pole": float("nan"), "note": "x"}])
    (row,) = read_metrics(tmp_path / "m.csv")
    assert row["epoch"] == 1 and row["val_iou_pole"] is None and "note" not in row


def test_crop_training_at_native_size_not_a_multiple_of_16(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from unetkit import Predictor, load_run
    from unetkit.config import ModelConfig, RunConfig
    from unetkit.evaluate import evaluate

    images, masks = make_blobs(10, size=(40, 52))
    train_dir = write_folder(tmp_path / "train", images[:8], masks[:8])
    val_dir = write_folder(tmp_path / "val", images[8:], masks[8:])
    base = tiny_config(epochs=2, crop=(32, 32), class_aware_crop=0.5, batch_size=4)
    config = RunConfig(
        model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3),
        train=base.train,
        data=base.data.__class__(
            images=str(train_dir[0]), masks=str(train_dir[1]), val_images=str(val_dir[0]), val_masks=str(val_dir[1])
        ),
    )
    logs: list[str] = []
    result = fit(config, tmp_path / "run", progress=False, log=logs.append)
    assert len(result.history) == 2 and result.history[-1]["val_miou"] is not None
    run = load_run(tmp_path / "run")
    assert run.config.train.crop == (32, 32) and run.config.preprocess.predict_mode == "sliding"
    pred = Predictor.from_run(tmp_path / "run", device="cpu").predict(np.array(Image.open(val_dir[0] / "img0.png")))
    assert pred.shape == (40, 52)
    report = evaluate(tmp_path / "run", val_dir[0], val_dir[1], device="cpu")
    assert report.metrics.matrix.sum() == 2 * 40 * 52  # whole images, every pixel counted


def test_crop_must_match_the_input_size() -> None:
    from unetkit.config import ModelConfig, RunConfig

    with pytest.raises(ConfigError, match="crop"):
        RunConfig(model=ModelConfig(input_size=(32, 32, 3), n_filters=4, n_classes=3), train=TrainConfig(crop=(16, 16)))


def test_ema_weights_are_validated_and_saved(tmp_path: Path, blobs) -> None:
    from unetkit.run import load_tensors

    train, val = blobs
    fit(tiny_config(epochs=1, ema=0.9), tmp_path / "run", train_data=train, val_data=val, progress=False, log=None)
    best, _ = load_tensors(tmp_path / "run" / "weights.safetensors")
    last, meta = load_tensors(tmp_path / "run" / "last.safetensors")
    assert meta["ema_updates"] == 2  # 16 images, batch 8
    for name, value in best.items():
        assert torch.equal(value, last[f"ema.{name}"])
    assert any(not torch.equal(v, last[f"model.{k}"]) for k, v in best.items() if v.dtype.is_floating_point)


def test_ema_resume_is_exact(tmp_path: Path, blobs) -> None:
    from unetkit.run import load_tensors

    train, val = blobs
    kw = dict(train_data=train, val_data=val, progress=False, log=None)
    fit(tiny_config(epochs=2, ema=0.8), tmp_path / "full", **kw)
    fit(tiny_config(epochs=1, ema=0.8), tmp_path / "part", **kw)
    fit(tiny_config(epochs=2, ema=0.8), tmp_path / "part", resume=True, **kw)
    a, meta_a = load_tensors(tmp_path / "full" / "last.safetensors")
    b, meta_b = load_tensors(tmp_path / "part" / "last.safetensors")
    assert meta_a["ema_updates"] == meta_b["ema_updates"] == 4
    for name in a:
        if name.startswith("ema."):
            torch.testing.assert_close(a[name], b[name])


def test_time_budget_stops_by_the_clock_and_resume_keeps_the_account(tmp_path: Path, blobs, monkeypatch) -> None:
    from unetkit import timebudget
    from unetkit.run import load_tensors

    now = [0.0]

    def fake_clock() -> float:  # every look at the clock costs a second
        now[0] += 1.0
        return now[0]

    monkeypatch.setattr(timebudget, "clock", fake_clock)
    train, val = blobs
    config = tiny_config(epochs=500, time_budget=20.0, schedule="cosine", warmup_epochs=1)
    kw = dict(train_data=train, val_data=val, progress=False, log=None)
    result = fit(config, tmp_path / "run", **kw)
    assert 2 <= len(result.history) < 20  # stopped by the budget, long before the 500-epoch cap
    assert (tmp_path / "run" / "weights.safetensors").exists() and result.best_miou is not None
    assert result.history[-1]["lr"] < 0.2 * config.train.lr  # the cosine ran out with the budget
    _, meta = load_tensors(tmp_path / "run" / "last.safetensors")
    spent, warm_end = meta["budget"]["spent"], meta["budget"]["warmup_ended_at"]
    assert 19 <= spent < 30 and 0 < warm_end < spent  # the fake clock's last tick is read after the checkpoint
    config = tiny_config(epochs=500, time_budget=40.0, schedule="cosine", warmup_epochs=1)
    more = fit(config, tmp_path / "run", resume=True, **kw)
    _, meta = load_tensors(tmp_path / "run" / "last.safetensors")
    assert 39 <= meta["budget"]["spent"] < 50 and len(more.history) > len(result.history)
    assert meta["budget"]["warmup_ended_at"] == warm_end  # no second warm-up: the schedule continues
    resumed_lr = more.history[len(result.history)]["lr"]
    assert result.history[-1]["lr"] < resumed_lr < 0.9 * config.train.lr  # the cosine stretched to 40 s


def test_progressive_trains_the_first_share_at_half_size(blobs) -> None:
    train, val = blobs
    sizes: list[tuple[int, int]] = []
    config = tiny_config(epochs=4, progressive=0.5, batch_size=8)
    model = build_model(config.model)
    model.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])) if _m.training else None)
    fit(config, None, train_data=train, val_data=val, model=model, progress=False, log=None)
    steps = len(sizes) // 4
    assert sizes[: 2 * steps] == [(16, 16)] * (2 * steps)  # epochs 1-2 of 4 at half size
    assert sizes[2 * steps :] == [(32, 32)] * (2 * steps)


def test_progressive_validates_once_training_reaches_full_size(blobs, tmp_path: Path) -> None:
    train, val = blobs
    config = tiny_config(epochs=4, progressive=0.75, batch_size=8)
    weights = tmp_path / "run" / "weights.safetensors"
    written: list[bool] = []
    result = fit(
        config,
        tmp_path / "run",
        train_data=train,
        val_data=val,
        progress=False,
        log=None,
        epoch_callback=lambda row: written.append(weights.exists()),
    )
    validated = [row.get("val_miou") is not None for row in result.history]
    assert validated == [False, False, True, True]  # epoch 3 ends the half-size phase: validated
    assert written == [True] * 4  # an unvalidated epoch's weights stand in until one is validated
    assert result.best_epoch in (3, 4) and result.best_miou == max(r["val_miou"] for r in result.history[2:])
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert [r.get("val_miou") is None for r in rows] == [True, True, False, False]


def test_progressive_follows_the_time_budget() -> None:
    from unetkit import timebudget
    from unetkit.train import at_half_size

    config = tiny_config(epochs=100, progressive=0.7, time_budget=100.0)
    now = [0.0]
    old, timebudget.clock = timebudget.clock, lambda: now[0]
    try:
        budget = timebudget.TimeBudget(100.0).start()
        now[0] = 69.0
        assert at_half_size(config, 99.0, budget)  # by the clock, not by the epoch
        now[0] = 71.0
        assert not at_half_size(config, 0.0, budget)
    finally:
        timebudget.clock = old
    assert at_half_size(config, 69.0) and not at_half_size(config, 70.0)  # without a budget: by epochs
    assert not at_half_size(tiny_config(epochs=2), 0.0)


def test_progressive_needs_a_half_size_the_network_divides() -> None:
    from unetkit.config import ModelConfig, RunConfig

    with pytest.raises(ConfigError, match="half the input size, 24x24"):
        RunConfig(model=ModelConfig(input_size=(48, 48, 3)), train=TrainConfig(progressive=0.5))
    with pytest.raises(ConfigError, match="progressive"):
        TrainConfig(progressive=1.0)


def test_cli_progressive_reaches_the_config(tmp_path: Path) -> None:
    images, masks = write_folder(tmp_path / "data", *make_blobs(8))
    args = ["train", "--images", images, "--masks", masks, "--n-classes", "3", "--epochs", "2", "--out", tmp_path / "r"]
    args += ["--input-size", "32", "32", "--n-filters", "4", "--depth", "3", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(app, [str(a) for a in [*args, "--progressive", "0.5"]])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["progressive"] == 0.5
