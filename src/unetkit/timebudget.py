"""A wall-clock training budget: ``--time-budget 10m`` ends a run on time with its best weights saved.

The learning-rate schedule follows the clock instead of an epoch count: the warm-up lasts
``warmup_epochs`` epochs as usual, then the cosine runs from the moment the warm-up ended to the end
of the budget (``lr_factor_at``). The run stops taking steps when the time left would not cover
another validation pass (the last one's duration), validates, saves and returns. The time spent
(and when the warm-up ended) is saved in the checkpoint, so a resumed run spends only what is left.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

__all__ = ["TimeBudget", "parse_duration", "lr_factor_at"]

clock: Callable[[], float] = time.monotonic  # replaced by a fake clock in tests

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}


def parse_duration(text: str | float | int) -> float:
    """Seconds from ``600``, ``"600"``, ``"90s"``, ``"10m"``, ``"1.5h"`` or ``"1h30m"``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"((?:\d+(?:\.\d+)?[hms])+|\d+(?:\.\d+)?)", s)
        if not parts:
            raise ConfigError(f"--time-budget {text!r} is not a duration; write e.g. 600, 90s, 10m, 1.5h or 1h30m")
        if s[-1].isdigit():
            seconds = float(s)
        else:
            seconds = sum(float(v) * _UNITS[u] for v, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", s))
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(f"--time-budget must be a positive duration, got {text!r}")
    return seconds


def lr_factor_at(elapsed: float, budget: float, warmup_ended_at: float | None) -> float:
    """The cosine factor after the warm-up: 1 when it ended, 0 at the end of the budget."""
    start = warmup_ended_at or 0.0
    done = min(max((elapsed - start) / max(budget - start, 1e-9), 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * done))


class TimeBudget:
    """Seconds spent against ``seconds`` allowed, counted by ``clock`` while ``running``."""

    def __init__(self, seconds: float, state: dict[str, Any] | None = None):
        self.seconds = float(seconds)
        self.spent_before = float(state["spent"]) if state else 0.0
        self.warmup_ended_at: float | None = state.get("warmup_ended_at") if state else None
        self._t0: float | None = None

    def start(self) -> TimeBudget:
        self._t0 = clock()
        return self

    @property
    def elapsed(self) -> float:
        return self.spent_before + (clock() - self._t0 if self._t0 is not None else 0.0)

    @property
    def left(self) -> float:
        return self.seconds - self.elapsed

    def exhausted(self, reserve: float = 0.0) -> bool:
        """True when less than ``reserve`` seconds (e.g. one validation pass) are left."""
        return self.left <= reserve

    def lr_factor(self, in_warmup: bool, warmup_factor: float) -> float:
        """``warmup_factor`` during the warm-up; afterwards the cosine over the time left."""
        elapsed = self.elapsed
        if in_warmup:
            return warmup_factor
        if self.warmup_ended_at is None:
            self.warmup_ended_at = elapsed
        return lr_factor_at(elapsed, self.seconds, self.warmup_ended_at)

    def state(self) -> dict[str, Any]:
        return {"spent": self.elapsed, "warmup_ended_at": self.warmup_ended_at, "seconds": self.seconds}
