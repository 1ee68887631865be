"""Named training recipes. `seed` is the tutorial exactly; `strong` gets more out of the same network."""

from __future__ import annotations

from dataclasses import replace

from .config import AugmentConfig, RunConfig
from .errors import ConfigError

RECIPES = ("seed", "strong")


def apply_recipe(config: RunConfig, name: str) -> RunConfig:
    """Return ``config`` with the recipe's training settings; explicit options are applied after this."""
    if name == "seed":
        return replace(config, train=replace(config.train, recipe="seed"))
    if name == "strong":
        train = replace(
            config.train, recipe="strong", optimizer="adamw", weight_decay=1e-4, schedule="cosine",
            warmup_epochs=1, loss="ce+dice",
            augment=AugmentConfig(hflip=True, scale=(0.75, 1.25), rotate=10.0, brightness=0.2, contrast=0.2,
                                  saturation=0.2),
        )
        return replace(config, train=train)
    raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
