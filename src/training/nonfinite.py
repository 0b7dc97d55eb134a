"""What happens when a step's gradient norm is NaN or infinite: its update is skipped on the device.

The check reads the global gradient norm that clipping computes anyway, after backward and
before the optimizer step, and never leaves the device: fused AdamW takes a `found_inf`
flag (the one fp16's GradScaler sets) and, when it is 1, leaves the weights, both moments
and the step count exactly as they were. The host learns of skipped steps only at the log
interval, from one read of two numbers; `stop` raises there. No bad update was ever
applied, so the weights a checkpoint saves on the way out are those of the good steps.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from src.errors import UserError


class TrainingDiverged(UserError):
    """The loss or the gradients went non-finite and the policy is `stop`."""


class NonfiniteGuard:
    """Skips each optimizer step whose gradient norm is not finite, and tells the host at log steps.

    Every rank sees the same all-reduced gradient norm under DDP and FSDP, so all ranks
    skip the same steps and reach the same decision at the same log step.
    """

    def __init__(self, policy: str, skipped: int = 0) -> None:
        self.policy = policy
        self.reported = skipped  # steps skipped as of the last report (restored from a checkpoint)
        self._skipped: torch.Tensor | None = None  # device int64: steps skipped in all
        self._first_new: torch.Tensor | None = None  # device int64: first step skipped since the report, or 0

    def check(self, grad_norm: torch.Tensor, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Marks optimizer step `step + 1` for fused AdamW to skip if `grad_norm` is not finite."""
        bad = grad_norm.isfinite().logical_not()  # () bool, on the device
        optimizer.found_inf = bad.float()  # read by the fused kernel itself: the exact skip
        if self._skipped is None:
            self._skipped = torch.full((), self.reported, dtype=torch.int64, device=grad_norm.device)
            self._first_new = torch.zeros((), dtype=torch.int64, device=grad_norm.device)
        self._skipped += bad
        self._first_new = torch.where(bad & (self._first_new == 0), step + 1, self._first_new)

    def skipped(self) -> torch.Tensor | None:
        """Steps skipped so far, on the device (to log without a sync); None before the first check."""
        return self._skipped

    def total(self) -> int:
        """Steps skipped so far, read on the host (for the checkpoint)."""
        return self.reported if self._skipped is None else int(self._skipped)

    def report(self, step: int) -> None:
        """Reads the device record (one host read); raises under `stop`, warns under `skip`.

        `step` is the optimizer step the weights are at, the one a checkpoint saved now holds.
        """
        if self._skipped is None:
            return
        skipped, first = torch.stack((self._skipped, self._first_new)).tolist()  # the one read
        new = skipped - self.reported
        if new == 0:
            return
        self.reported = skipped
        self._first_new.zero_()
        where = f"step {first}" if new == 1 else f"{new} steps (the first: step {first})"
        skipped_text = "update skipped" if new == 1 else "updates skipped"
        if self.policy == "stop":
            raise TrainingDiverged(
                f"non-finite gradients at {where}, {skipped_text}; last.ckpt holds step {step}, with "
                "finite updates only. Lower optim.lr, or pass nonfinite=skip to skip such steps, and "
                "continue with ckpt_path=<run>/checkpoints/last.ckpt"
            )
        rank_zero_warn(f"non-finite gradients at {where}, {skipped_text} ({skipped} in all)")
