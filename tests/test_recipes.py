"""Recipes: `seed` is the defaults exactly, `strong` sets its documented fields, explicit options win."""

from __future__ import annotations

from dataclasses import asdict, replace
from typing import Any

import pytest

from unetkit import build_config
from unetkit.config import AugmentConfig, RunConfig, TrainConfig
from unetkit.errors import ConfigError
from unetkit.recipes import STRONG, STRONG_AUGMENT, STRONG_MODEL, apply_recipe


def cli_config(**given: Any) -> RunConfig:
    """What `unetkit train` builds from the options in ``given`` (everything else left unset)."""
    return build_config(**{"n_classes": 3, "channels": 3, **given})


def test_seed_is_the_defaults():
    assert apply_recipe(RunConfig(), "seed") == RunConfig()
    t = TrainConfig()
    seed = ("adam", 1e-3, 1e-7, "ce", 32, "constant")
    assert (t.optimizer, t.lr, t.eps, t.loss, t.batch_size, t.schedule) == seed
    assert not t.augment.enabled
    assert cli_config() == cli_config(recipe="seed")
    assert cli_config().train == TrainConfig()


def test_strong_sets_its_fields_and_keeps_the_seed_layers():
    base = RunConfig()
    strong = apply_recipe(base, "strong")
    t = strong.train
    assert t.recipe == "strong"
    for key, value in STRONG.items():
        assert getattr(t, key) == value
    assert (t.optimizer, t.schedule, t.loss) == ("adamw", "cosine", "ce+dice")
    assert t.class_weights == "sqrt-median-frequency" and base.train.class_weights == "none"
    assert t.warmup_epochs >= 1 and t.weight_decay > 0 and t.lr > 1e-3
    assert t.augment == STRONG_AUGMENT and t.augment.hflip and t.augment.scale[0] < 1 < t.augment.scale[1]
    # the seed's layers, filters, depth and dropout, plus batch norm (the one documented model option)
    assert STRONG_MODEL == {"batch_norm": True}
    assert replace(strong.model, batch_norm=False) == base.model and strong.model.batch_norm
    assert t.epochs == base.train.epochs  # the budget stays the user's
    # everything not named by the recipe keeps the seed's value
    untouched = set(asdict(TrainConfig())) - set(STRONG) - {"recipe"}
    assert all(getattr(t, k) == getattr(base.train, k) for k in untouched)


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="unknown recipe"):
        apply_recipe(RunConfig(), "fancy")


def test_explicit_options_override_the_recipe():
    c = cli_config(recipe="strong", lr=5e-4, batch_size=16, loss="ce", schedule="constant", epochs=7)
    assert (c.train.lr, c.train.batch_size, c.train.loss, c.train.schedule, c.train.epochs) == (
        5e-4,
        16,
        "ce",
        "constant",
        7,
    )
    assert c.train.optimizer == "adamw" and c.train.augment == STRONG_AUGMENT  # the rest stays strong


def test_augment_switch():
    assert cli_config(recipe="strong", augment=False).train.augment == AugmentConfig()
    assert cli_config(recipe="strong", augment=True).train.augment == STRONG_AUGMENT
    assert cli_config(recipe="seed", augment=True).train.augment == STRONG_AUGMENT  # on: the strong one
    assert cli_config(recipe="seed", augment=False).train.augment == AugmentConfig()


def test_batch_norm_option_overrides_the_recipe():
    assert cli_config(recipe="strong").model.batch_norm
    assert not cli_config(recipe="strong", batch_norm=False).model.batch_norm
    assert not cli_config(recipe="seed").model.batch_norm


def test_model_option_chooses_fcn():
    assert cli_config(model="fcn").model.name == "fcn"
    assert cli_config(model="fcn", recipe="strong").train.recipe == "strong"
