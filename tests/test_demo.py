"""The demo's recipes: the default is the chosen strong plan, ``--recipe seed`` is the tutorial exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from unetkit.cli import app
from unetkit.config import AugmentConfig, ModelConfig, TrainConfig
from unetkit.data import synthetic
from unetkit.data.io import read_mask
from unetkit.demo import PLANS, demo_config, example_scenes, run_demo
from unetkit.errors import ConfigError
from unetkit.recipes import STRONG, STRONG_MODEL


def test_seed_recipe_is_the_tutorial_exactly():
    config = demo_config("seed")
    assert config.train == TrainConfig(epochs=10, recipe="seed")  # Adam 1e-3, CE, batch 32, constant, no aug
    assert config.model == ModelConfig(n_classes=13)  # unet_model(n_filters=32), depth 5, no batch norm
    assert config.model.input_size == (96, 128, 3)
    assert (PLANS["seed"].train_count, PLANS["seed"].val_count, PLANS["seed"].epochs) == (640, 128, 10)


def test_default_demo_is_the_chosen_strong_plan():
    config = demo_config()
    plan = PLANS["strong"]
    assert config.train.recipe == "strong" and config.train.epochs == plan.epochs
    assert config.train.time_budget == plan.time_budget
    assert config.model == ModelConfig(n_classes=13, **STRONG_MODEL)  # the seed's network + batch norm
    for key, value in STRONG.items():  # the recipe, except what the demo's plan sets
        if key not in plan.train:
            assert getattr(config.train, key) == value, key
    assert config.train.augment == AugmentConfig()  # procedural scenes: fresh data, no augmentation
    assert config.train.progressive == 0.45  # progressive resizing, chosen on validation mIoU (docs/accuracy.md)
    assert config.train.class_weights == "sqrt-median-frequency"  # pedestrians, signs, poles weighted up
    assert demo_config("seed").train.class_weights == "none"  # the tutorial's recipe, exactly
    assert (plan.train_count, plan.val_count) == (640, 128)


def test_demo_config_overrides_and_unknown_recipe():
    assert demo_config("strong", epochs=2, batch_size=4).train.batch_size == 4
    config = demo_config("strong", model={"dropout": 0.0})  # ModelConfig fields (benchmarks/demo_study.py)
    assert config.model.dropout == 0.0 and config.model.batch_norm and demo_config().model.dropout == 0.3
    with pytest.raises(ConfigError, match="seed, strong"):
        demo_config("fast")


def test_example_scenes_show_vehicles_and_pedestrians():
    masks = [np.zeros((4, 4), np.uint8) for _ in range(6)]
    masks[1][0, :2] = synthetic.VEHICLE  # no pedestrian: not chosen
    for i, n in ((2, 1), (4, 3), (5, 2)):
        masks[i][1, :n] = synthetic.PERSON
        masks[i][2, :n] = synthetic.VEHICLE
    assert example_scenes(masks, (synthetic.PERSON, synthetic.VEHICLE), k=3) == [2, 4, 5]
    assert example_scenes(masks, (synthetic.PERSON, synthetic.VEHICLE), k=4) == [0, 2, 4, 5]


def test_cli_demo_recipe_seed_runs_the_seed_recipe(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--recipe", "seed", "--out", str(out), "--train-count", "8", "--val-count", "4"]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["train"]["recipe"] == "seed" and saved["train"]["batch_size"] == 32
    assert saved["model"]["batch_norm"] is False and saved["train"]["lr"] == 1e-3
    assert "next:" in result.output


def test_run_demo_strong_tiny(tmp_path):
    r = run_demo(tmp_path / "d", train_count=8, val_count=4, epochs=1, progress=False, log=lambda _m: None)
    saved = json.loads((tmp_path / "d" / "config.json").read_text())
    assert saved["train"]["recipe"] == "strong" and saved["model"]["batch_norm"] is True
    assert r["epochs"] == 1 and (tmp_path / "d" / "examples.png").exists()


def test_larger_scenes_with_crop_training_are_tested_whole(tmp_path):
    """scene_size: the scenes are generated at that size; with crop training the model takes crops of them
    and the test scenes are segmented whole (sliding windows), at their own size."""
    out = tmp_path / "d"
    quiet = dict(progress=False, log=lambda _m: None)
    r = run_demo(out, train_count=8, val_count=4, epochs=1, scene_size=(64, 96), crop=(32, 64), **quiet)
    assert read_mask(out / "test-scenes" / "mask" / "scene_00000.png").shape == (64, 96)
    assert r["config"].model.input_size == (32, 64, 3) and r["config"].train.crop == (32, 64)
    assert r["metrics"].matrix.sum() == 4 * 64 * 96  # every test pixel scored at the scene's size


def test_time_budget_stops_with_the_best_weights(tmp_path):
    logs: list[str] = []
    out = tmp_path / "d"
    r = run_demo(out, train_count=8, val_count=4, time_budget=1e-3, progress=False, log=logs.append)
    assert r["epochs"] == 1 < r["config"].train.epochs  # the budget ended the run, not the epoch count
    assert (out / "curves.png").exists() and (out / "examples.png").exists() and "next:" in logs[-3]


def test_the_strong_demo_trains_on_a_time_budget_and_epochs_turn_it_off():
    assert PLANS["strong"].time_budget is not None and PLANS["seed"].time_budget is None  # the tutorial runs uncut
    assert demo_config().train.time_budget == PLANS["strong"].time_budget
    assert demo_config(epochs=2).train.time_budget is None and demo_config(epochs=2).train.epochs == 2
    assert demo_config("seed").train.time_budget is None


def test_cli_demo_time_budget(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--train-count", "8", "--val-count", "4", "--time-budget", "1s"]
    result = CliRunner().invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "config.json").read_text())["train"]["time_budget"] == 1.0
