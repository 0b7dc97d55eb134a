"""Callbacks that tests add to a real `python -m src.train` run through Hydra (`+callbacks.<name>...`).

The rank processes Lightning starts re-run the same command line from the repository root, so
`tests` is importable in each of them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L


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


class KillAt(L.Callback):
    """SIGKILLs its own process as optimizer step `step` + 1 starts: a `kill -9` or the OOM killer,
    with no chance to save or flush anything."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
