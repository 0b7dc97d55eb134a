"""TQDM's progress bar: optimizer steps to `max_steps` with an ETA, and values as of the last log step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from src.lightning_compat import is_log_step


class ProgressBar(TQDMProgressBar):
    """Shows `global_step / max_steps` with an ETA, and the logged metrics named in `show`.

    Lightning's bar counts the batches of an epoch, which an endless dataset never ends, so it
    has no total and no ETA; this one counts optimizer steps from the run's start. A continuation
    starts the bar at its checkpoint's step (tqdm's `initial`), so the rate and the ETA come from
    this run's steps alone, and `this run` shows its own steps next to the whole run's.

    Lightning turns every `prog_bar=True` metric into a Python number after every batch (a
    host sync per batch on a GPU), so training metrics are logged without it and this bar
    reads the few it shows when they are logged: every `log_every_n_steps` optimizer steps and
    at the run's last.
    """

    def __init__(self, refresh_rate: int = 1, show: Sequence[str] = ("train/loss", "tokens_per_s")) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.show = tuple(show)
        self._shown: dict[str, float] = {}
        self._read_step = self._drawn_step = self._start_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._read_step = self._drawn_step = self._start_step = trainer.global_step
        self._count_steps(trainer)  # a continuation from mid-epoch gets no on_train_epoch_start

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)  # resets the bar to the epoch's batches
        self._count_steps(trainer)

    def _count_steps(self, trainer: L.Trainer) -> None:
        bar = self.train_progress_bar
        bar.total, bar.initial, bar.n = trainer.max_steps, self._start_step, trainer.global_step
        bar.set_description("step")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self.is_enabled:
            return
        if step != self._read_step and is_log_step(trainer, step):
            logged = trainer.logged_metrics
            names = [name for name in self.show if name in logged]
            if names:
                values = torch.stack([logged[name].float() for name in names]).tolist()  # one read
                self._shown = dict(zip(names, values, strict=True))
            self._read_step = step
        if step != self._drawn_step and (step % self.refresh_rate == 0 or step == trainer.max_steps):
            self._drawn_step = self.train_progress_bar.n = step
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))  # redraws

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        metrics = {**super().get_metrics(trainer, pl_module), **self._shown}
        if self._start_step > 0:  # a continuation
            metrics["this run"] = (
                f"{trainer.global_step - self._start_step}/{trainer.max_steps - self._start_step}"
            )
        return metrics
