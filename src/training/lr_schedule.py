"""Learning-rate multiplier as a pure function of the optimizer step and its own horizon.

The horizon (`total_steps`) is not `trainer.max_steps`: continuing a run from 5000 to
5050 steps leaves the schedule where it was, and past the horizon the LR holds at its
floor instead of jumping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from src.errors import UserError

KINDS = ("constant", "cosine", "linear", "wsd")


@dataclass(frozen=True)
class LRSchedule:
    """`kind`: constant, cosine, linear or wsd (warmup-stable-decay, as SmolLM2 was trained).

    Warmup is linear from 0; decay ends at `min_lr_ratio` at `total_steps`; `wsd` decays
    linearly over its last `decay_fraction` of the horizon.
    """

    kind: str = "wsd"
    warmup_steps: int = 100
    total_steps: int = 5000
    min_lr_ratio: float = 0.1
    decay_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"schedule.kind={self.kind!r} is unknown; choose one of {list(KINDS)}")
        if self.warmup_steps < 0 or self.total_steps <= 0:
            raise UserError(
                f"schedule needs warmup_steps >= 0 ({self.warmup_steps}) and total_steps > 0 "
                f"({self.total_steps}); fix schedule.warmup_steps or schedule.total_steps"
            )
        if not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.decay_fraction <= 1:
            raise UserError("schedule.min_lr_ratio and decay_fraction must be in [0, 1]")

    def __call__(self, step: int) -> float:
        """Multiplier of the peak LR for the update made at optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        step = min(step, self.total_steps)
        floor = self.min_lr_ratio
        if self.kind == "wsd":
            decay_start = max(self.warmup_steps, round(self.total_steps * (1 - self.decay_fraction)))
            if step < decay_start:
                return 1.0
            progress = (step - decay_start) / max(1, self.total_steps - decay_start)
            return 1.0 - (1.0 - floor) * progress
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.kind == "linear":
            return 1.0 - (1.0 - floor) * progress
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
