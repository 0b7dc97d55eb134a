"""What happens when a step's gradient norm is NaN or infinite: stop, or skip the update.

The check reads the global gradient norm that clipping computes anyway, after backward and
before the optimizer step. A NaN or infinite loss always gives non-finite gradients, so one
check covers both, and it runs before the weights change: the state a checkpoint saves at
that moment is the last good one. Deciding on the host costs one device sync per optimizer
step (the CPU waits for backward to finish before queueing the optimizer step); see the
README's "Reliability" section for what that costs and why it is accepted.
"""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_warn

from src.errors import UserError


class TrainingDiverged(UserError):
    """The loss or the gradients went non-finite and the policy is `stop`."""


def guard_step(
    grad_norm: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    policy: str,
    step: int,
    loss: torch.Tensor | None,
) -> bool:
    """Returns True if the update must be skipped; raises TrainingDiverged under `stop`.

    Skipping drops every gradient (`grad=None`): torch optimizers then leave the weights,
    the moments and their step counts untouched, an exact no-op. Every rank sees the same
    all-reduced gradients under DDP, so all ranks take the same decision.
    """
    if bool(torch.isfinite(grad_norm)):  # the one host sync per step
        return False
    loss_text = f"loss {float(loss):.4g}, " if loss is not None else ""
    if policy == "stop":
        raise TrainingDiverged(
            f"non-finite gradients at step {step + 1} ({loss_text}grad norm {float(grad_norm)}); "
            f"last.ckpt keeps step {step}, before it. Lower optim.lr, or pass nonfinite=skip "
            "to skip such steps, and continue with ckpt_path=<run>/checkpoints/last.ckpt"
        )
    optimizer.zero_grad(set_to_none=True)
    rank_zero_warn(f"step {step + 1}: non-finite gradients ({loss_text.rstrip(', ')}), update skipped")
    return True
