"""Loss spikes: a train loss far above its recent median, warned about or rolled back in memory.

A step spikes when its loss exceeds median + k x MAD of the `window` losses before it (once
`min_steps` are known). The statistic lives on the device; the host reads one record of
the first spike at each log step, the only place it decides, so judging costs no extra
sync. Under `rollback` each log step without a spike refreshes one host copy of the
weights, optimizer state and statistic (the last good state); a spike restores it, rewinds
the step counter to it and moves the data past every batch since: the window skipped is
the batches of steps s+1 .. L (s the good log step, L the log step that saw the spike, the
spiking step among them). Nothing else changes (LR schedule, seed), so the run continues
as one given the same data without that window would. Rollbacks, the steps they rewound
and the statistic go into the checkpoint; the data module keeps the skipped batches in its
own state, so a continuation reads the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning_utilities.core.apply_func import apply_to_collection

from src.lightning_compat import rewind_optimizer_steps
from src.training.nonfinite import TrainingDiverged
from src.training.spike_rule import SpikeRule


def _to_host(value: Any) -> Any:
    """A detached copy on the CPU of every tensor in a (nested) state dict."""
    return apply_to_collection(value, torch.Tensor, lambda t: t.detach().to("cpu", copy=True))


def rewound_in(state: dict[str, Any] | None) -> int:
    """The steps rollbacks undid, from a checkpoint's spike state (`SpikeGuard.state_dict`;
    None where the checkpoint has none): the loggers of a continuation count them."""
    return (state or {}).get("rewound_steps", 0)


@dataclass
class Snapshot:
    """The last good state, in host memory."""

    step: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    losses: torch.Tensor
    seen: int


class SpikeGuard:
    """Watches each step's loss on the device; warns or rolls back at log steps.

    Under DDP each rank judges its own loss and the ranks agree at the log step (a spike on
    any rank is a spike on all), so they roll back together to the same step.
    """

    def __init__(self, rule: SpikeRule) -> None:
        self.rule = rule
        self.spikes = 0  # seen at log steps (each one rolled back under `rollback`)
        self.rewound_steps = 0  # steps made and then undone: the logging step counts them
        self.seen = 0  # losses observed (host count; the ring buffer holds the last `window`)
        self._losses: torch.Tensor | None = None  # (window,) device
        self._record: torch.Tensor | None = None  # (3,) device: first spike's step (0: none), loss, threshold
        self._snapshot: Snapshot | None = None
        self.stop_message: str | None = None

    @property
    def active(self) -> bool:
        return self.rule.mode != "off"

    def observe(self, loss: torch.Tensor, step: int) -> None:
        """Judges optimizer step `step`'s loss against the ones before, on the device."""
        if not self.active:
            return
        if self._losses is None:
            self._losses = torch.zeros(self.rule.window, device=loss.device)
        elif self._losses.device != loss.device:  # restored from a checkpoint
            self._losses = self._losses.to(loss.device)
        if self._record is None:
            self._record = torch.zeros(3, device=loss.device)
        loss = loss.float()
        if self.seen >= self.rule.min_steps:
            recent = self._losses[: min(self.seen, self.rule.window)]
            median = recent.nanmedian()  # a NaN loss is nonfinite's business (nonfinite.py), not a spike
            threshold = median + self.rule.k * (recent - median).abs().nanmedian()
            first = (loss > threshold) & (self._record[0] == 0)
            self._record = torch.where(
                first, torch.stack((loss.new_full((), step), loss, threshold)), self._record
            )
        self._losses[self.seen % self.rule.window] = loss
        self.seen += 1

    def decide(self, module: L.LightningModule, step: int) -> None:
        """At a log step, `step` the optimizer step just made: warn, roll back, or keep this state."""
        if not self.active:
            return
        trainer = module.trainer
        record = self._record if self._record is not None else torch.zeros(3, device=module.device)
        record = trainer.strategy.reduce(record.clone(), reduce_op="max")  # a spike on any rank
        spiked_at, loss, threshold = record.tolist()  # the one host read per log interval
        if self._record is not None:
            self._record.zero_()
        if not spiked_at:
            if self.rule.mode == "rollback":
                self._snapshot = self._take(module, step)
            return
        what = (
            f"loss spike at step {int(spiked_at)}: train loss {loss:.4g} > {threshold:.4g} "
            f"(median + {self.rule.k:g} x MAD)"
        )
        if self.rule.mode == "warn":
            self.spikes += 1
            rank_zero_warn(f"{what} ({self.spikes} in all)")
            return
        good = self._snapshot
        self._restore(module, good)
        skipped = step - good.step
        rewind_optimizer_steps(trainer, skipped)
        self.rewound_steps += skipped
        batches = skipped * trainer.accumulate_grad_batches
        trainer.datamodule.skip_batches(batches)
        if self.spikes >= self.rule.max_rollbacks:
            self.stop_message = (
                f"{what}, after {self.spikes} rollback(s) (spike.max_rollbacks={self.rule.max_rollbacks}); "
                f"last.ckpt holds step {good.step}, the last good state, past the spiking data. Lower "
                "optim.lr or raise spike.max_rollbacks, and continue with "
                "ckpt_path=<run>/checkpoints/last.ckpt"
            )
            return
        self.spikes += 1
        rank_zero_warn(
            f"{what}; rolled back to step {good.step}, skipping the {batches} batches of steps "
            f"{good.step + 1}-{step} (rollback {self.spikes} of at most {self.rule.max_rollbacks})"
        )

    def raise_if_stopped(self) -> None:
        if self.stop_message:
            raise TrainingDiverged(self.stop_message)

    def start(self, module: L.LightningModule) -> None:
        """The state training starts from (step 0 or a checkpoint's, both decided) is good."""
        if self.rule.mode == "rollback":
            self._snapshot = self._take(module, module.trainer.global_step)

    def _take(self, module: L.LightningModule, step: int) -> Snapshot:
        optimizer = module.optimizers(use_pl_optimizer=False)
        losses = self._losses.clone() if self._losses is not None else torch.zeros(0)
        return Snapshot(
            step, _to_host(module.state_dict()), _to_host(optimizer.state_dict()), losses, self.seen
        )

    def _restore(self, module: L.LightningModule, good: Snapshot) -> None:
        module.load_state_dict(good.model)
        # A fresh copy: loading keeps CPU tensors as they are, and the optimizer updates its state in place.
        module.optimizers(use_pl_optimizer=False).load_state_dict(_to_host(good.optimizer))
        if good.seen:
            self._losses.copy_(good.losses)
        self.seen = good.seen

    def state_dict(self) -> dict[str, Any]:
        losses = self._losses.cpu() if self._losses is not None else None
        return {
            "spikes": self.spikes,
            "rewound_steps": self.rewound_steps,
            "seen": self.seen,
            "losses": losses,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spikes, self.rewound_steps, self.seen = state["spikes"], state["rewound_steps"], state["seen"]
        if state["losses"] is not None and len(state["losses"]) == self.rule.window:
            self._losses = state["losses"].clone()
        else:  # no statistic saved, or another window: judge again after min_steps
            self.seen = 0
