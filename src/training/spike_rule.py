"""The `spike` config group: what a loss spike is, and what a run does on one.

Kept apart from the guard (src/training/spike.py), which needs Lightning, so that the config
checks run before Lightning is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

from src.errors import UserError

MODES = ("off", "warn", "rollback")


@dataclass
class SpikeRule:
    """What a spike is (median + k x MAD of the last `window` losses), and what happens on one."""

    mode: str = "off"
    window: int = 50
    k: float = 6.0
    min_steps: int = 20
    max_rollbacks: int = 3

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"spike.mode must be one of {MODES}, got {self.mode!r}")
        if not 2 <= self.min_steps <= self.window:
            raise UserError(
                f"spike.min_steps={self.min_steps} must be in [2, spike.window={self.window}]; "
                "lower spike.min_steps or raise spike.window"
            )
        if self.k <= 0 or self.max_rollbacks < 0:
            raise UserError(
                f"spike.k ({self.k}) must be positive and spike.max_rollbacks ({self.max_rollbacks}) >= 0"
            )
