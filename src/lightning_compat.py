"""Every use of Lightning's private API, in one place.

Lightning 2.6 has no public hook for the things below. Each goes through `_private`,
which raises `LightningChanged` when the name is gone instead of silently creating a new
attribute, and tests/test_lightning_compat.py checks each one against the installed
Lightning, so an upgrade that breaks one fails loudly in the tests and at first use.
"""

from __future__ import annotations

import csv
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import lightning
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

WRITTEN_FOR = "lightning 2.6"


class LightningChanged(RuntimeError):
    """A private Lightning name this project relies on is gone or has changed."""


def _private(owner: Any, name: str) -> Any:
    if not hasattr(owner, name):
        kind = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        raise LightningChanged(
            f"{kind}.{name} is gone in lightning {lightning.__version__}; "
            f"src/lightning_compat.py was written for {WRITTEN_FOR} and needs updating"
        )
    return getattr(owner, name)


def set_logging_step(trainer: Trainer, step: int) -> None:
    """Make the step that loggers see equal the optimizer step.

    Lightning re-derives its logging step on restore and gets it one too high for a
    checkpoint saved after the step counter moved (at train end, on Ctrl-C or a crash),
    so a continuation's curves would skip a step.
    """
    loop = trainer.fit_loop.epoch_loop
    _private(loop, "_batches_that_stepped")
    loop._batches_that_stepped = step


def is_log_step(trainer: Trainer, step: int) -> bool:
    """Whether optimizer step `step` (counted from 1) is logged: every `log_every_n_steps`-th,
    as Lightning logs, and the run's last (`max_steps`), which `log_the_last_step` adds."""
    every = trainer.log_every_n_steps
    return every > 0 and (step % every == 0 or step == trainer.max_steps)


class _LastStepLoggerConnector(_LoggerConnector):
    @property
    def should_update_logs(self) -> bool:
        trainer = self.trainer
        last = trainer.training and trainer.global_step == trainer.max_steps
        return super().should_update_logs or (last and trainer.log_every_n_steps > 0)


def log_the_last_step(trainer: Trainer) -> None:
    """Have Lightning log the run's last optimizer step (`max_steps`) as it logs every
    `log_every_n_steps`-th.

    Its rule (`should_update_logs`) logs a step whose number is a multiple of the interval,
    or when the trainer was told to stop: a run whose `max_steps` is not a multiple ended
    with its last logged loss a few steps old, and one shorter than the interval logged none.
    """
    connector = _private(trainer, "_logger_connector")
    _private(_LoggerConnector, "should_update_logs")
    if type(connector) not in (_LoggerConnector, _LastStepLoggerConnector):
        raise LightningChanged(
            f"Trainer._logger_connector is a {type(connector).__name__} in lightning "
            f"{lightning.__version__}; src/lightning_compat.py was written for {WRITTEN_FOR}"
        )
    connector.__class__ = _LastStepLoggerConnector


def mark_step_saved(callback: ModelCheckpoint, step: int) -> None:
    """Tell a ModelCheckpoint that `step` is already on disk (a resumed run's first step)."""
    _private(callback, "_last_global_step_saved")
    callback._last_global_step_saved = step


def set_mesh_sizes(strategy: ModelParallelStrategy, data_parallel: int, tensor_parallel: int) -> None:
    """The device mesh a ModelParallelStrategy builds in `setup_environment`.

    Its `"auto"` data-parallel size is the number of nodes, and the sizes are fixed at
    construction, before the number of processes is known.
    """
    _private(strategy, "_data_parallel_size")
    _private(strategy, "_tensor_parallel_size")
    strategy._data_parallel_size, strategy._tensor_parallel_size = data_parallel, tensor_parallel


class AppendingExperimentWriter(ExperimentWriter):
    """Keeps an existing metrics.csv and its columns; Lightning's writer deletes it.

    It does so in the private `_check_log_dir_exists`, called from its `__init__`.
    """

    _private(ExperimentWriter, "_check_log_dir_exists")

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(csv.DictReader(file).fieldnames or [])


def appending_csv_writer(logger: CSVLogger) -> AppendingExperimentWriter:
    """`logger.experiment`, created once as an AppendingExperimentWriter."""
    if _private(logger, "_experiment") is None:
        _private(logger, "_fs").makedirs(logger.root_dir, exist_ok=True)
        logger._experiment = AppendingExperimentWriter(log_dir=logger.log_dir)
    return logger._experiment


def wandb_init_args(logger: WandbLogger) -> dict[str, Any]:
    """The keyword arguments the logger will pass to `wandb.init` (mutable: mode, dir, id)."""
    return _private(logger, "_wandb_init")


def wandb_run(logger: WandbLogger) -> Any:
    """The logger's W&B run if it has started one, else None (never starts one)."""
    return _private(logger, "_experiment")


def note_sigterm_only(trainer: Trainer, handler: Callable[[int], None]) -> None:
    """Make SIGTERM call `handler(signum)` and nothing else, and drop the per-batch SIGTERM broadcast.

    Lightning's own SIGTERM handler runs `dist.broadcast` inside the signal handler (a collective
    that can interleave with the one the interrupted code is in), and under DDP its training loop
    broadcasts a flag and reads it on the host before every batch. The handler is looked up on
    the signal connector when `fit` registers it, so this must run before `fit` starts.
    """
    connector = _private(trainer, "_signal_connector")
    _private(connector, "_sigterm_notifier_fn")
    connector._sigterm_notifier_fn = lambda signum, frame: handler(signum)
    loop = trainer.fit_loop.epoch_loop
    _private(loop, "_broadcast_sigterm_tensor")
    loop._broadcast_sigterm_tensor = lambda: None


def stop_after_this_batch(trainer: Trainer) -> None:
    """Lightning raises its SIGTERMException at the end of the current training batch.

    Every rank must call this after the same batch: the exception leads to a collective save.
    """
    connector = _private(trainer, "_signal_connector")
    _private(connector, "received_sigterm")
    connector.received_sigterm = True


def child_ranks(trainer: Trainer) -> list[subprocess.Popen]:
    """The rank processes that Lightning's own launcher started from this one (empty elsewhere).

    Only local rank 0 of a run that Lightning launched itself has any; under torchrun or SLURM
    the launcher is theirs.
    """
    launcher = trainer.strategy.launcher
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return []
    return list(_private(launcher, "procs"))


def delay_kill_on_child_failure(grace_s: float) -> None:
    """Give this process `grace_s` seconds to exit by itself when a child rank exits non-zero.

    Lightning's launcher polls its children every 5 s and, on a non-zero exit, SIGKILLs every rank
    and itself at once: right for a rank 0 stuck in a collective with a dead peer, wrong for a
    rank 0 a moment away from its own exit with the same code (143 after SIGTERM, 2 after
    non-finite gradients), which would die with -9 instead.
    """
    for thread in threading.enumerate():
        if isinstance(thread, _ChildProcessObserver) and "_terminate_all" not in vars(thread):
            terminate_all = _private(thread, "_terminate_all")

            def after_grace(terminate_all: Callable[[], None] = terminate_all) -> None:
                time.sleep(grace_s)  # on the watcher's thread; it dies with the process
                terminate_all()

            thread._terminate_all = after_grace


def rewind_optimizer_steps(trainer: Trainer, steps: int) -> None:
    """Move `trainer.global_step` back by `steps` (a loss-spike rollback to an earlier state),
    and the batch counters with it.

    The step counter is the automatic optimization's progress tracker; both its `ready` and
    `completed` counts move, so a call from inside `optimizer_step` (where `ready` is one ahead)
    leaves the counter right once Lightning completes the step.
    """
    loop = trainer.fit_loop.epoch_loop
    progress = _private(loop, "automatic_optimization").optim_progress.optimizer.step
    for tracker in (progress.total, progress.current):
        tracker.ready -= steps
        tracker.completed -= steps
    # The batch counters place validation: on eval_every steps of the weights, as without a rollback.
    count_batches_as(trainer, loop.batch_progress.total.ready - steps * trainer.accumulate_grad_batches)


def count_batches_as(trainer: Trainer, batches: int) -> None:
    """Make the training loop's batch counters read `batches` for the steps already taken.

    Lightning steps the optimizer when its batch count reaches a multiple of
    `accumulate_grad_batches`, and validates at multiples of `val_check_interval` batches: a
    continuation whose accumulation differs from its checkpoint's would otherwise step after
    fewer micro-batches and validate between its `eval_every` steps. Every count moves by the
    same amount, so what a restart makes of them (where the save happened) stays the same.
    """
    progress = trainer.fit_loop.epoch_loop.batch_progress
    shift = batches - progress.total.ready
    for tracker in (progress.total, progress.current):
        tracker.ready += shift
        tracker.started += shift
        tracker.processed += shift
        tracker.completed += shift


def batch_progress(trainer: Trainer) -> dict[str, Any]:
    """The training loop's batch counters, as a checkpoint stores them (a copy)."""
    loop = trainer.fit_loop.epoch_loop
    return {
        "batch_progress": _private(loop, "batch_progress").state_dict(),
        "batches_that_stepped": _private(loop, "_batches_that_stepped"),
    }


def restore_batch_progress(trainer: Trainer, saved: dict[str, Any]) -> None:
    """Set the batch counters back to `saved` (`batch_progress`)."""
    loop = trainer.fit_loop.epoch_loop
    loop.batch_progress.load_state_dict(saved["batch_progress"])
    loop._batches_that_stepped = saved["batches_that_stepped"]
