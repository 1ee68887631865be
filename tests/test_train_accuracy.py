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
