"""Named training recipes. ``seed`` is the tutorial exactly; ``strong`` gets more out of the same network.

``strong`` keeps the seed's network (five levels, the same filters, skips, dropout 0.3 in the two
deepest blocks, He-normal initialisation) and adds one documented model option, batch
normalisation after each 3x3 convolution of the conv blocks. Options the user gives explicitly are
applied after the recipe and win (see ``unetkit.configure.build_config``): ``--no-batch-norm`` gives the seed's
exact layers with the rest of the recipe.

``strong``, and why each part is there (measured with benchmarks/recipe_study.py; numbers in
docs/accuracy.md, section Recipes):

- Batch norm in the conv blocks (+2,944 parameters at the defaults, 0.03 %): without it the seed's
  network sits on the majority class for its first tens of updates and then learns slowly; with it
  the same epochs reach a much higher validation mIoU (membrane +0.10, built-in scenes +0.06 at the
  same settings), which is what a 10-minute CPU budget needs. It also lets the rate go higher.
  Trade-off: such a run cannot be exported to the seed's Keras code (ONNX, serving and prediction
  work as usual).
- AdamW at a peak learning rate of 5e-3 with decoupled weight decay 1e-2: batch norm tolerates a
  rate five times the seed's, and 5e-3 beat 1e-3 and 2e-3 on both data sets (1e-2 was no better).
- One warm-up epoch (linear), then cosine to zero over ``epochs``: the warm-up keeps the first steps
  stable at the high rate; the cosine tail is where a short run gains most. The schedule follows the
  epoch budget, so give the budget you have (``--epochs``).
- Batch size 8: a short budget is counted in updates, and on a CPU the speed per image hardly
  depends on the batch; 8 gave four times the seed's updates per epoch and a much better mIoU than
  32 or 16 in the same epochs (4 was better still on the scenes, but leaves a GPU idle).
- Cross-entropy + soft Dice: the Dice term averages over the classes present in a batch, so thin and
  rare classes (poles, signs, lane markings, membranes) pull as hard as large ones, which is what
  mean IoU rewards; it beat plain cross-entropy on both data sets.
- Class weights from the training masks, square-rooted median frequency (``sqrt-median-frequency``):
  thin, rare classes (poles, signs, pedestrians) weigh more in the cross-entropy, within an order of
  magnitude of the large ones. On the built-in scenes, same 4 + 3 epochs, same machine: test mIoU
  0.458 -> 0.504, poles 0.02 -> 0.15, signs 0 -> 0.14, pedestrians 0.04 -> 0.13 (pixel accuracy
  -0.012); membrane 5-fold cross-validation: +0.003 +- 0.004 mIoU (4 of 5 folds), mean class accuracy
  +0.019. Full median-frequency weights (an order of magnitude more spread) cost the large classes
  (scenes: mIoU 0.387), as plain class weighting did not help on real road scenes in issue 4's run.
  Counting the classes takes one pass over the training masks (on the cache: instant).
- Mild augmentation, joint on the device: horizontal flip, scale 0.8-1.25 with random crop or pad
  (padded mask pixels ignored), brightness/contrast/saturation jitter 0.1 (image only). On real data
  it is what counters the seed recipe's overfitting; on the built-in scenes (already varied in
  lighting and layout) stronger augmentation (scale 0.75-1.5, rotation, jitter 0.2) slowed a
  16-epoch run, so the recipe keeps it mild. Membrane 5-fold cross-validation (docs/accuracy.md) agrees
  that it costs a short run (+0.018 mIoU without it at 20 epochs, where every run still underfits);
  it stays for the longer runs on real scenes, where the seed recipe overfits.
- Not in the recipe: progressive resizing (the demo's scenes gain from it; membrane lost 0.037 at equal
  epochs and 0.019 at equal CPU in the same cross-validation) and EMA (no effect in short runs).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .config import AugmentConfig, RunConfig
from .errors import ConfigError

RECIPES = ("seed", "strong")

STRONG_AUGMENT = AugmentConfig(hflip=True, scale=(0.8, 1.25), brightness=0.1, contrast=0.1, saturation=0.1)

# TrainConfig fields the strong recipe sets; everything else keeps the seed's value.
STRONG: dict[str, Any] = dict(
    optimizer="adamw",
    lr=5e-3,
    weight_decay=1e-2,
    schedule="cosine",
    warmup_epochs=1,
    loss="ce+dice",
    batch_size=8,
    augment=STRONG_AUGMENT,
    class_weights="sqrt-median-frequency",
)
# ModelConfig fields the strong recipe sets (options beyond the seed, documented above).
STRONG_MODEL: dict[str, Any] = dict(batch_norm=True)


def apply_recipe(config: RunConfig, name: str) -> RunConfig:
    """Return ``config`` with the recipe's training settings; explicit options are applied after this."""
    if name == "seed":
        return replace(config, train=replace(config.train, recipe="seed"))
    if name == "strong":
        return replace(
            config, train=replace(config.train, recipe="strong", **STRONG), model=replace(config.model, **STRONG_MODEL)
        )
    raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
