"""Training options for accuracy: the loss choices, per-class validation IoU, EMA, the time budget, crops."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_blobs, tiny_config, write_folder
from typer.testing import CliRunner

from unetkit import SegmentationData, fit
from unetkit.cli import app
from unetkit.config import LOSSES, TrainConfig
from unetkit.errors import ConfigError
from unetkit.losses import LOSS_KINDS


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
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    a = json.loads((tmp_path / "r" / "config.json").read_text())["train"]["augment"]
    assert a["scale"] == [0.5, 2.0] and a["brightness"] == a["contrast"] == a["saturation"] == 0.3
    assert a["hue"] == 0.05 and a["hflip"] is False


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
