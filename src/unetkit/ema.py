"""An exponential moving average of a model's weights, kept beside the training loop.

After each optimizer step ``ema = d * ema + (1 - d) * weights`` for every floating-point entry of
the state dict (parameters and batch-norm running statistics); integer entries (batch-norm step
counters) are copied. The average starts as a copy of the model. With ``warmup`` the decay of step
k is ``min(decay, (1 + k) / (10 + k))`` (TensorFlow's ``num_updates`` rule), so the first steps do
not drag the random initialisation along in a short run; without it the decay is constant and
after k steps ``ema = d**k * w_0 + (1 - d) * sum_t d**(k - t) * w_t``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["ModelEMA"]


class ModelEMA:
    """The averaged copy (``module``) of a model, updated with ``update(model)`` after each step."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"--ema decay must be in (0, 1), e.g. 0.999; got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        k = self.updates + 1
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        self.updates += 1
        source = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = source[name].detach()
            if avg.dtype.is_floating_point:
                avg.mul_(d).add_(value.to(avg.dtype), alpha=1.0 - d)
            else:
                avg.copy_(value)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Restore the average (and its step count) saved with a checkpoint, for resume."""
        self.module.load_state_dict(state)
        self.updates = int(updates)
