"""Named training recipes. ``seed`` is the tutorial exactly; ``strong`` gets more out of the same network.

A recipe only sets ``TrainConfig`` fields (optimiser, schedule, loss, batch size, augmentation); the
network stays the seed's (no batch norm, dropout 0.3 in the two deepest blocks, He-normal
initialisation), so a run of either recipe loads, exports and serves the same way. Options the user
gives explicitly are applied after the recipe and win (see ``cli._train_config``).

``strong``, and why each part is there (measured in benchmarks/recipe_study.py; numbers in README,
"Accuracy: recipes and the U-Net vs FCN study"):

- AdamW, peak learning rate 2e-3, decoupled weight decay 1e-2: without batch norm the seed's network
  tolerates a higher peak rate than Adam's 1e-3 once the rate is warmed up; decoupled decay
  regularises a from-scratch model with few images without fighting Adam's scaling.
- One warm-up epoch (linear), then cosine to zero over the run: the warm-up keeps the first steps of
  a no-batch-norm net stable at the higher rate; cosine gives the last epochs a small rate, which
  is where most of the validation gain of a short run comes from, at any epoch budget (the schedule
  follows ``epochs``, so give the budget you have).
- Batch size 8: on a small data set a short budget is counted in updates, and per-image speed
  hardly changes with the batch on a CPU; four times the seed's updates per epoch.
- Cross-entropy + soft Dice: the Dice term is averaged over the classes present in a batch, so thin
  and rare classes (poles, signs, lane markings, membranes) pull as hard as large ones, which is
  what mean IoU rewards; class weighting alone did not help on road scenes (see the issue).
- Augmentation, joint on the device: horizontal flip, scale 0.75-1.5 with random crop/pad (padded
  mask pixels ignored), rotation up to 5 degrees, brightness/contrast/saturation jitter 0.2 (image
  only). Mild on purpose: it must not slow a 10-20 epoch run, yet it is what stops the seed's recipe
  from overfitting (its training loss keeps falling while validation stalls).
"""

from __future__ import annotations

from dataclasses import replace

from .config import AugmentConfig, RunConfig
from .errors import ConfigError

RECIPES = ("seed", "strong")

STRONG_AUGMENT = AugmentConfig(hflip=True, scale=(0.75, 1.5), rotate=5.0, brightness=0.2, contrast=0.2,
                               saturation=0.2)

# TrainConfig fields the strong recipe sets; everything else keeps the seed's value.
STRONG = dict(optimizer="adamw", lr=2e-3, weight_decay=1e-2, schedule="cosine", warmup_epochs=1,
              loss="ce+dice", batch_size=8, augment=STRONG_AUGMENT)


def apply_recipe(config: RunConfig, name: str) -> RunConfig:
    """Return ``config`` with the recipe's training settings; explicit options are applied after this."""
    if name == "seed":
        return replace(config, train=replace(config.train, recipe="seed"))
    if name == "strong":
        return replace(config, train=replace(config.train, recipe="strong", **STRONG))
    raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
