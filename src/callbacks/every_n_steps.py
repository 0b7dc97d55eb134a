"""The schedule text samples and downstream scores share: step 0, every N steps, the end."""

from __future__ import annotations

import lightning as L


class EveryNSteps(L.Callback):
    """Calls `run` at step 0 of a fresh run, after every `every_n_steps`-th optimizer step
    (0: never in between) and when fit ends, at most once per step: a continuation's first
    step was covered by the run it continues."""

    def __init__(self, every_n_steps: int) -> None:
        self.every_n_steps = every_n_steps
        self._last_step = -1

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            self._run_once(trainer, pl_module)
        self._last_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._run_once(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run_once(trainer, pl_module)

    def _run_once(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.run(trainer, pl_module)
