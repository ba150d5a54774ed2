"""Schedules: frozen dataclasses with ``value(step)`` and ``is_update(step)``.

Steps count optimizer steps from 1 (the first call of ``DynamicSparsity.step`` is step 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import SparsenetsError, choice_error

DROP_SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class UpdateSchedule:
    """Topology updates every ``every`` steps, from after ``start_step`` up to ``end_step``."""

    every: int
    end_step: int
    start_step: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise SparsenetsError(f"update_every must be a positive integer, got {self.every}")

    def is_update(self, step: int) -> bool:
        return self.start_step < step <= self.end_step and step % self.every == 0

    @property
    def last_update(self) -> int:
        """The last step at which an update happens (``start_step`` if none does)."""
        last = (self.end_step // self.every) * self.every
        return last if last > self.start_step else self.start_step


@dataclass(frozen=True)
class DropFraction:
    """Annealed drop fraction f(t): cosine α/2·(1 + cos(π t / T_end)), linear, or constant α."""

    initial: float
    end_step: int
    kind: str = "cosine"

    def __post_init__(self) -> None:
        if self.kind not in DROP_SCHEDULES:
            raise choice_error("drop schedule", self.kind, DROP_SCHEDULES)
        if not 0.0 <= self.initial <= 1.0:
            raise SparsenetsError(f"drop_fraction must be in [0, 1], got {self.initial}")

    def value(self, step: int) -> float:
        progress = min(max(step / max(self.end_step, 1), 0.0), 1.0)
        if self.kind == "cosine":
            return self.initial / 2 * (1 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return self.initial * (1 - progress)
        return self.initial


@dataclass(frozen=True)
class CubicSchedule:
    """Zhu & Gupta's cubic schedule from ``initial`` to ``final`` between two steps.

    ``value(t) = final + (initial - final) · (1 - p)³`` with ``p = (t - start) / (end - start)``
    clipped to [0, 1]; used for nonzero counts in gradual magnitude pruning.
    """

    initial: float
    final: float
    start_step: int
    end_step: int

    def value(self, step: int) -> float:
        span = self.end_step - self.start_step
        progress = 1.0 if span <= 0 else min(max((step - self.start_step) / span, 0.0), 1.0)
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3
