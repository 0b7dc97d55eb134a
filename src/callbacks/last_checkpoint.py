"""Keep `last.ckpt` current: every N steps, and whenever fit ends (max_steps, Ctrl-C, SIGTERM, a crash)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info


class LastCheckpoint(L.Callback):
    """`ckpt_path=<run>/checkpoints/last.ckpt` always continues from where the run stopped.

    The state saved is that of the last completed optimizer step; a half-accumulated step
    is redone after the resume, because the data position follows the optimizer step.
    Files are written atomically by `AtomicCheckpointIO`, and sharded folders (trainer=fsdp)
    by `FSDP2Strategy`, so a kill leaves the previous `last.ckpt` whole. An exception before
    training starts (bad data, a failed restore) saves nothing: the trainer then holds an
    untrained model, and on a continuation `last.ckpt` is the very file the run was asked to
    continue from.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1
        self._started = False

    def _save(self, trainer: L.Trainer, reason: str | None = None) -> None:
        step = trainer.global_step
        if step != self._saved_step:
            trainer.save_checkpoint(self.path)
            self._saved_step = step
        if reason:
            rank_zero_info(f"{reason}: {self.path} holds step {step}; continue with ckpt_path={self.path}")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = True
        if trainer.global_step > 0:  # resumed: this step's checkpoint is the one we started from
            self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, "training ended")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self._started:
            self._save(trainer, f"stopped by {type(exception).__name__}")
