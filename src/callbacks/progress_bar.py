"""TQDM's progress bar, showing training values as of the last log step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Shows the logged metrics named in `show`, read once per log step.

    Lightning turns every `prog_bar=True` metric into a Python number after every batch (a
    host sync per batch on a GPU), so training metrics are logged without it and this bar
    reads the few it shows when they are logged, every `log_every_n_steps` optimizer steps.
    """

    def __init__(self, refresh_rate: int = 1, show: Sequence[str] = ("train/loss", "tokens_per_s")) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.show = tuple(show)
        self._shown: dict[str, float] = {}
        self._read_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._read_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, n = trainer.global_step, trainer.log_every_n_steps
        if self.is_enabled and n and step != self._read_step and step % n == 0:
            logged = trainer.logged_metrics
            names = [name for name in self.show if name in logged]
            if names:
                values = torch.stack([logged[name].float() for name in names]).tolist()  # one read
                self._shown = dict(zip(names, values, strict=True))
            self._read_step = step
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, int | str | float]:
        return {**super().get_metrics(trainer, pl_module), **self._shown}
