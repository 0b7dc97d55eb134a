"""The run's summary: optimizer steps, best validation loss and its step, last training loss,
tokens seen, wall time.

Written to `<run>/summary.json` and to every logger with a `log_summary` method (W&B's run
summary) after each validation and when fit ends, from values already on the host there
(validation reads its loss for the progress bar), so no training step waits for the device.
The validation losses are kept in the checkpoint (the callback's state), so a continuation
from step s never counts a loss from steps a crashed process made after its last checkpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from src.files import atomic_write

VAL_LOSSES = "val/loss_by_step"


class RunSummary(L.Callback):
    """Keeps {optimizer step: val/loss} and the run's wall time; writes the summary to `path`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.val_losses: dict[int, float] = {}
        self.wall_time_s = 0.0  # of the processes before this one, up to their last checkpoint
        self._start: float | None = None
        self._started_at = 0  # the step training started from

    def state_dict(self) -> dict[str, Any]:
        return {"val_losses": dict(self.val_losses), "wall_time_s": self._wall_time()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_losses, self.wall_time_s = dict(state_dict["val_losses"]), state_dict["wall_time_s"]

    def _wall_time(self) -> float:
        return self.wall_time_s + (0.0 if self._start is None else time.perf_counter() - self._start)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._start is None:  # the step-0 validation before fit counts as the run's time
            self._start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A periodic checkpoint at step s is saved before step s's validation: take that loss
        from the summary the earlier process wrote, and nothing later."""
        step = self._started_at = trainer.global_step
        if step > 0 and self.path.is_file():
            earlier = json.loads(self.path.read_text()).get(VAL_LOSSES, {})
            self.val_losses.update({int(s): loss for s, loss in earlier.items() if int(s) <= step})

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        if loss is None or trainer.sanity_checking:
            return
        self.val_losses[trainer.global_step] = float(loss)  # the step whose weights scored it
        self._write(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """A run stopped inside training (non-finite gradients, a signal, a crash) says where it got,
        as last.ckpt does; one stopped before has nothing new to say."""
        if trainer.global_step > self._started_at:
            self._write(trainer)

    def summary(self, trainer: L.Trainer) -> dict[str, float | int]:
        values: dict[str, float | int] = {"wall_time_s": self._wall_time(), "steps": trainer.global_step}
        if self.val_losses:
            best_step = min(self.val_losses, key=self.val_losses.__getitem__)
            values["val/loss_best"], values["val/loss_best_step"] = self.val_losses[best_step], best_step
        train_loss = trainer.callback_metrics.get("train/loss")
        if isinstance(train_loss, torch.Tensor):
            values["train/loss_last"] = float(train_loss)
        values["tokens_seen"] = trainer.lightning_module.tokens_seen()
        return values

    def _write(self, trainer: L.Trainer) -> None:
        if trainer.global_rank != 0:
            return
        values = self.summary(trainer)
        for logger in trainer.loggers:
            if hasattr(logger, "log_summary"):
                logger.log_summary(values)
        by_step = {str(step): loss for step, loss in sorted(self.val_losses.items())}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path) as f:
            f.write(json.dumps({**values, VAL_LOSSES: by_step}, indent=1) + "\n")
