"""The training data used so far, repeats told apart, from the DataModule's host-side counts."""

from __future__ import annotations

import lightning as L

from src.lightning_compat import is_log_step


class DataProgress(L.Callback):
    """Logs `data/<count>` at log steps, for DataModules that count what they serve.

    A stream counts per rank (`rank_counts`: `documents_seen`, `unique_documents`), summed over
    ranks with one small all-reduce; a text file's follow from the step and the checkpoint's
    count (`run_counts`: `windows_seen`, `unique_windows`, `epochs`), the same on every rank. Both are
    host-side numbers, so reading them costs no device sync.
    """

    def __init__(self) -> None:
        self._logged_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged_step = trainer.global_step  # log after optimizer steps, as the loss is

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        datamodule, step = trainer.datamodule, trainer.global_step
        if datamodule is None or step == self._logged_step or not is_log_step(trainer, step):
            return
        for name, value in getattr(datamodule, "rank_counts", dict)().items():
            pl_module.log(f"data/{name}", float(value), reduce_fx="sum", sync_dist=True)
        for name, value in getattr(datamodule, "run_counts", dict)().items():
            pl_module.log(f"data/{name}", float(value))
        self._logged_step = step
