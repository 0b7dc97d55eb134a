"""Periodic `step_0005000.ckpt` files that a continuation never writes twice."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from src.lightning_compat import mark_step_saved


class StepCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, aware that a resumed run's first step is already saved.

    Without this, a continuation with gradient accumulation saves the restored step again
    (as `step_...-v1.ckpt`) on its first micro-batch, because the step counter has not moved.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0:
            mark_step_saved(self, trainer.global_step)
