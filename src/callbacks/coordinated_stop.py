"""Every rank stops after the same optimizer step on SIGTERM or Ctrl-C; no rank outlives a failed one.

Signals: the handler only notes the signal (no collective inside a signal handler). The ranks
agree at optimizer-step boundaries: in a multi-process run every `every_n_steps` steps, with one
small all-reduce and one host read per log interval and none in between; in one process every
step, a Python flag. All then raise Lightning's SIGTERMException after that same step, so
`LastCheckpoint`'s collective save is of a step every rank completed.

The handler is in place from before the data is tokenized to the end of training (`listening`).
Outside an optimizer step (tokenizing, validation, sampling, the final save) one process has
no step to finish, so SIGTERM stops it at once, as Ctrl-C does; a checkpoint being written is
finished first (`stop_signals_deferred`). Several processes note a signal there and agree at
the first log step of training, where the collective already is.

Failures: an exception on one rank is not agreed, so nothing collective follows it
(`LastCheckpoint` skips its save) and its process exits. Under Lightning's own launcher, rank 0
ends the ranks it started when it fails (`end_child_ranks`), they die with it if it is killed
outright, and Lightning's watcher on rank 0 kills every rank when a child fails. Under torchrun
or SLURM, their agent ends the job when one process exits non-zero.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from src.lightning_compat import (
    child_ranks,
    delay_kill_on_child_failure,
    note_sigterm_only,
    stop_after_this_batch,
)

# How long rank 0 waits for the ranks it launched to exit by themselves after an agreed stop,
# and how long Lightning's watcher lets rank 0 finish its own exit after a child exits non-zero.
CHILD_EXIT_WAIT_S = 30.0
PR_SET_PDEATHSIG = 1  # linux/prctl.h


class CoordinatedStop(L.Callback):
    """SIGTERM (and, in a multi-process run, Ctrl-C) stop all ranks after one agreed optimizer step."""

    def __init__(self, every_n_steps: int, processes: int = 1) -> None:
        self.every_n_steps = max(1, every_n_steps)
        self.processes = processes
        self.received: int | None = None  # the first stop signal this process received
        self.agreed: int | None = None  # the stop signal all ranks act on (SIGTERM wins over SIGINT)
        self.in_step = False  # from an optimizer step's first batch to its end
        self._step = -1
        self._sigint_before = None

    @contextmanager
    def listening(self) -> Iterator[None]:
        """SIGTERM goes to `_receive` inside the block, in every phase; Lightning's trainer calls
        chain their own handler to it and restore it after."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        before = signal.signal(signal.SIGTERM, lambda signum, frame: self._receive(signum))
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, before)

    def _receive(self, signum: int) -> None:
        """A signal handler: it notes the signal and does nothing that could block. One process
        outside an optimizer step stops here, with the exception Lightning raises after a step."""
        self.received = self.received or signum
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once
            signal.signal(signal.SIGINT, self._sigint_before)
        elif self.processes == 1 and not self.in_step and self.agreed is None:
            self.agreed = signum
            raise SIGTERMException()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.local_rank > 0 and isinstance(
            getattr(trainer.strategy, "cluster_environment", None), LightningEnvironment
        ):
            die_with_parent()  # started by rank 0 through Lightning's launcher
        note_sigterm_only(trainer, self._receive)
        delay_kill_on_child_failure(CHILD_EXIT_WAIT_S)
        # A single process keeps Python's KeyboardInterrupt and saves at once: nothing to agree on.
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            self._sigint_before = signal.signal(signal.SIGINT, lambda signum, frame: self._receive(signum))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._sigint_before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._sigint_before)
        self._sigint_before = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step = trainer.global_step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self.in_step = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if step == self._step:  # mid-accumulation: a stop waits for the whole optimizer step
            return
        self.in_step = False  # this callback comes last: the step's saves and samples are done
        self._step = step
        agreed = self.received or 0
        if trainer.world_size > 1:
            if step % self.every_n_steps:
                return
            signals = torch.tensor(agreed, device=trainer.strategy.root_device)
            agreed = int(trainer.strategy.reduce(signals, reduce_op="max"))  # the one host read
        if agreed:
            self.agreed = agreed
            rank_zero_info(f"{signal.Signals(agreed).name} received: every rank stops after step {step}")
            stop_after_this_batch(trainer)

    def exit_code(self) -> int:
        """The shell's 128 + signal number of the agreed stop."""
        return 128 + (self.agreed or signal.SIGTERM)


def die_with_parent() -> None:
    """Linux sends this process SIGKILL when the one that started it dies, even by `kill -9`.

    Without it a rank whose launcher was killed outright waits in NCCL's next collective for
    the timeout (30 min in Lightning); gloo would notice the closed connection by itself.
    """
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def end_child_ranks(trainer: L.Trainer, wait_s: float) -> list[int]:
    """Wait up to `wait_s` for the ranks this process launched, SIGKILL the rest; their exit codes.

    A rank left alone may sit in a collective with a dead peer: gloo notices, NCCL waits for
    its timeout (30 min in Lightning).
    """
    children = child_ranks(trainer)
    deadline = time.monotonic() + wait_s
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return [child.returncode for child in children]
