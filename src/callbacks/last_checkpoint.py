"""Keep `last.ckpt` current: every N steps, and whenever fit ends (max_steps, Ctrl-C, SIGTERM, a crash)
after a step that is not saved yet.

In a multi-process run a save is collective (barriers, the data position gathered from every
rank), so on the way out it happens only for a stop every rank takes after the same step: an
agreed SIGTERM or Ctrl-C (`CoordinatedStop`) or non-finite gradients, which every rank sees
alike. After any other exception the ranks are at different places, one of them maybe gone,
and a save would hang: `last.ckpt` keeps the last periodic save.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.lightning_compat import batch_progress, restore_batch_progress
from src.training.checkpoint import CheckpointWriteFailed
from src.training.nonfinite import TrainingDiverged

# Exceptions every rank raises after the same step, so that a collective save is safe.
AGREED_STOPS = (SIGTERMException, TrainingDiverged)
# How SIGTERM and Ctrl-C reach the trainer (src/callbacks/coordinated_stop.py).
SIGNAL_STOPS = (SIGTERMException, KeyboardInterrupt)


def rewound_steps(trainer: L.Trainer) -> int:
    """The optimizer steps loss-spike rollbacks have undone so far (0 without a spike guard)."""
    spike = getattr(trainer.lightning_module, "spike", None)
    return spike.rewound_steps if spike is not None else 0


class LastCheckpoint(L.Callback):
    """`ckpt_path=<run>/checkpoints/last.ckpt` always continues from where the run stopped.

    The state saved is that of the last completed optimizer step; a half-accumulated step
    is redone after the resume, because the data position follows the optimizer step. So do
    the loop's batch counters, which place validation and the logged steps: a Ctrl-C in the
    middle of a step leaves them counting the batch it interrupted, and the save sets them
    back to where that step's last batch ended, as a periodic save records them.
    Files are written atomically by `AtomicCheckpointIO`, and sharded folders (trainer=fsdp)
    by `FSDP2Strategy`, so a kill leaves the previous `last.ckpt` whole. An exception before
    training starts (bad data, a failed restore) saves nothing: the trainer then holds an
    untrained model, and on a continuation `last.ckpt` is the very file the run was asked to
    continue from. A failed write (a full disk) is not retried on the way out: the file keeps
    the last step that was written whole.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0, filename: str = "last.ckpt") -> None:
        self.path = Path(dirpath) / filename
        self.every_n_train_steps = every_n_train_steps
        self._saved_step = -1
        self._saved_rewound = 0  # the steps loss-spike rollbacks had undone by the saved state
        self._started = False
        self._step_end: dict | None = None  # the batch counters where the last optimizer step ended
        self._step_end_step = -1

    def _save(self, trainer: L.Trainer, reason: str | None = None) -> None:
        step, rewound = trainer.global_step, rewound_steps(trainer)
        # A rollback to a saved step is a state of its own: the data has moved past the spike.
        if (step, rewound) != (self._saved_step, self._saved_rewound):
            # The full training state; left unset, Lightning logs a misleading "weights_only ... False".
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step, self._saved_rewound = step, rewound
        if reason:
            self._report(trainer, reason)

    def _report(self, trainer: L.Trainer, reason: str) -> None:
        """Where to continue from: this file, the checkpoint the run started from, or nowhere."""
        if self._saved_step > 0:
            path = self.path
            rank_zero_info(f"{reason}: {path} holds step {self._saved_step}; continue with ckpt_path={path}")
        elif trainer.ckpt_path:
            rank_zero_info(f"{reason} before training resumed: continue with ckpt_path={trainer.ckpt_path}")
        else:
            rank_zero_info(f"{reason} before the first step: nothing saved")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = True
        # Step 0 is the untrained model; a resumed step's checkpoint is the one we started from.
        self._saved_step, self._saved_rewound = trainer.global_step, rewound_steps(trainer)
        self._step_end_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step != self._step_end_step:  # this batch ended an optimizer step
            self._step_end, self._step_end_step = batch_progress(trainer), trainer.global_step
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step % n == 0:
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer, "training ended")

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        reason = f"stopped by {type(exception).__name__}"
        if not self._started:
            if isinstance(exception, SIGNAL_STOPS):
                self._report(trainer, reason)
            return
        if isinstance(exception, CheckpointWriteFailed):  # a retry would fail alike
            self._report(trainer, reason)
        elif trainer.world_size == 1 or isinstance(exception, AGREED_STOPS):
            self._rewind_to_step_end(trainer)
            self._save(trainer, reason)
        else:
            held = f"holds step {self._saved_step}" if self._saved_step > 0 else "was not written yet"
            rank_zero_info(f"{reason}: not saved, a save needs every rank; {self.path} {held}")

    def _rewind_to_step_end(self, trainer: L.Trainer) -> None:
        """The batch counters as the last optimizer step's end left them, if a batch started since."""
        if self._step_end is None or trainer.global_step != self._step_end_step:
            return
        ready = batch_progress(trainer)["batch_progress"]["total"]["ready"]
        if ready > self._step_end["batch_progress"]["total"]["ready"]:
            restore_batch_progress(trainer, self._step_end)
