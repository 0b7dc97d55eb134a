"""Documents seen, from the DataModule's host-side counter, at the log interval."""

from __future__ import annotations

import lightning as L


class DataProgress(L.Callback):
    """Logs `data/documents_seen` (summed over ranks) for DataModules that count documents.

    The counter lives on the host, so reading it costs no device sync; the sum over ranks is
    one small all-reduce, made only at the log interval.
    """

    def __init__(self) -> None:
        self._logged_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged_step = trainer.global_step  # log after optimizer steps, as the loss is

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        documents = getattr(trainer.datamodule, "documents_seen", None)
        step = trainer.global_step
        if documents is None or step == self._logged_step or step % trainer.log_every_n_steps:
            return
        pl_module.log("data/documents_seen", float(documents), reduce_fx="sum", sync_dist=True)
        self._logged_step = step
