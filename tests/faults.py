"""Callbacks that tests add to a real `python -m src.train` run through Hydra (`+callbacks.<name>...`).

The rank processes Lightning starts re-run the same command line from the repository root, so
`tests` is importable in each of them.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import lightning as L
import torch


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
