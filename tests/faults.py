"""Callbacks that tests add to a real `python -m src.train` run through Hydra (`+callbacks.<name>...`).

The rank processes Lightning starts re-run the same command line from the repository root, so
`tests` is importable in each of them.
"""

from __future__ import annotations

import errno
import io
import os
import signal as signal_module
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from src.callbacks.text_samples import TextSamples
from src.data import text_file
from src.training import checkpoint


class RecordPid(L.Callback):
    """Writes `rank<r>.pid` into `pid_dir`, so a test can watch processes it did not start."""

    def __init__(self, pid_dir: str) -> None:
        self.pid_dir = Path(pid_dir)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        path = self.pid_dir / f"rank{trainer.global_rank}.pid"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.replace(path)


class FailAt(RecordPid):
    """Raises on rank `rank` as optimizer step `step` + 1 starts, first writing `failed` by the pids."""

    def __init__(self, pid_dir: str, rank: int, step: int) -> None:
        super().__init__(pid_dir)
        self.rank, self.step = rank, step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            (self.pid_dir / "failed").touch()
            raise RuntimeError(f"injected failure on rank {self.rank} after step {self.step}")


class HangAt(FailAt):
    """Sleeps instead of raising, outside any collective: only its own death ends it."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            (self.pid_dir / "hanging").touch()
            time.sleep(3600)


class SignalIn(L.Callback):
    """Sends `signal` (SIGTERM or SIGINT) to this process once, in `phase`, at optimizer step `step`.

    Phases: tokenizing, validation_at_start, training (inside step `step` + 1, before its
    update), validation, sampling and checkpoint (inside the first file write of step `step`).
    The signal lands between two Python bytecodes of that phase, as a scheduler's would.
    """

    def __init__(self, phase: str, signal: str, step: int = 0) -> None:
        self.phase, self.signum, self.step = phase, getattr(signal_module, signal), step
        self._sent = False
        self.trainer: L.Trainer | None = None
        if phase == "tokenizing":  # before the trainer's first call, which tokenizes
            self._wrap(text_file, "tokenize_documents", lambda: True)
        elif phase == "checkpoint":
            self._wrap(torch, "save", self._at_step)

    def _at_step(self) -> bool:
        return self.trainer is not None and self.trainer.global_step == self.step

    def _send(self) -> None:
        if not self._sent:
            self._sent = True
            os.kill(os.getpid(), self.signum)

    def _wrap(self, owner: object, name: str, now) -> None:
        """`owner.name` sends the signal first when `now()`, then runs as before."""
        original = getattr(owner, name)

        def signalling(*args, **kwargs):
            if now():
                self._send()
            return original(*args, **kwargs)

        setattr(owner, name, signalling)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer
        if self.phase == "sampling":
            samples = next(c for c in trainer.callbacks if isinstance(c, TextSamples))
            self._wrap(samples, "_complete", self._at_step)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.phase == "training" and trainer.global_step == self.step:
            self._send()

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        phase = "validation_at_start" if trainer.state.fn == TrainerFn.VALIDATING else "validation"
        if self.phase == phase and trainer.global_step == self.step:
            self._send()


class FullDisk(io.FileIO):
    """A file on a disk that fills up after its first 4 KiB: writes past them fail with ENOSPC."""

    def write(self, data) -> int:
        if self.tell() + len(data) > 4096:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


class DiskFullFrom(L.Callback):
    """From optimizer step `step` on, the checkpoint writer's files land on a full disk."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            checkpoint.open = lambda path, mode="r", *args, **kwargs: io.BufferedWriter(FullDisk(path, mode))


class KillAt(L.Callback):
    """SIGKILLs its own process as optimizer step `step` + 1 starts: a `kill -9` or the OOM killer,
    with no chance to save or flush anything."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal_module.SIGKILL)


class CorruptBatchAt(L.Callback):
    """Replaces the tokens of optimizer step `step` + 1's batches by random ids, once: a loss spike
    from bad data (a rolled-back run makes that step again, on clean data)."""

    def __init__(self, step: int, seed: int = 0) -> None:
        self.step, self.seed = step, seed
        self.done = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if self.done or trainer.global_step != self.step:
            return
        generator = torch.Generator().manual_seed(self.seed + batch_idx)
        noise = torch.randint(0, pl_module.config.vocab_size, batch.shape, generator=generator)
        batch.copy_(noise.to(batch.device))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        self.done = self.done or trainer.global_step == self.step


class SamplesDiskFullFrom(L.Callback):
    """From optimizer step `step` on, the text samples file lands on a full disk (ENOSPC)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            samples = next(c for c in trainer.callbacks if isinstance(c, TextSamples))
            samples.out_file = FullDiskPath(samples.out_file)


class FullDiskPath(type(Path())):
    """A path whose file cannot be opened for writing: the disk under it is full."""

    def open(self, mode: str = "r", *args, **kwargs):
        if any(flag in mode for flag in "wax+"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return super().open(mode, *args, **kwargs)
