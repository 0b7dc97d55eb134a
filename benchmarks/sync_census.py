"""Host syncs per optimizer step of a real training run, as a callback added on the command line:

    python -m src.train ... +callbacks.sync_census._target_=benchmarks.sync_census.SyncCensus \\
        +callbacks.sync_census.out_file=census.json

Two counts per step, from one batch start to the next (the whole loop iteration, every
callback and logger included): the Python-level host reads of tests/test_host_sync.py
(`.item()`, `.cpu()`, `bool(t)`, ...), and on CUDA every synchronizing call that
`torch.cuda.set_sync_debug_mode("warn")` reports, from Python or from C++ (a blocking copy
of a batch to the device counts there, not in the first).
"""

from __future__ import annotations

import json
import traceback
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning as L
import torch

from tests.test_host_sync import HostReads

SYNC_WARNING = "called a synchronizing CUDA operation"


class SyncCensus(L.Callback):
    """Writes {"cuda": bool, "steps": {step: {"host_reads": [...], "cuda_syncs": [...]}}} at the end.

    Each entry is 'what (file:line)' of the first caller outside torch. Listed after the
    default callbacks (Hydra's `+callbacks.` adds it last), so its window holds theirs.
    """

    def __init__(self, out_file: str) -> None:
        self.out_file = Path(out_file)
        self.steps: dict[int, dict[str, list[str]]] = defaultdict(
            lambda: {"host_reads": [], "cuda_syncs": []}
        )
        self._mode: HostReads | None = None
        self._warnings: warnings.catch_warnings | None = None
        self._step = 0
        self._cuda = False

    def _on_warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_WARNING not in str(message):
            return self._show(message, category, filename, lineno, file, line)
        stack = traceback.extract_stack()[:-1]
        caller = next((f for f in reversed(stack) if "/torch/" not in f.filename), None)
        where = f" ({caller.filename}:{caller.lineno})" if caller else ""
        self.steps[self._step]["cuda_syncs"].append(f"sync{where}")

    def _open(self, step: int) -> None:
        self._step = step
        self._mode = HostReads()
        self._mode.__enter__()
        if self._cuda:
            self._warnings = warnings.catch_warnings()
            self._warnings.__enter__()
            warnings.simplefilter("always")
            self._show, warnings.showwarning = warnings.showwarning, self._on_warning
            torch.cuda.set_sync_debug_mode("warn")

    def _close(self) -> None:
        if self._warnings is not None:  # in the reverse order of _open
            torch.cuda.set_sync_debug_mode("default")
            self._warnings.__exit__(None, None, None)
            self._warnings = None
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.steps[self._step]["host_reads"] += self._mode.reads
            self._mode = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cuda = trainer.strategy.root_device.type == "cuda"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._close()
        self._open(trainer.global_step + 1)  # the optimizer step this batch belongs to

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        if trainer.is_global_zero:
            steps = {str(step): reads for step, reads in sorted(self.steps.items())}
            self.out_file.write_text(json.dumps({"cuda": self._cuda, "steps": steps}, indent=1))

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error: BaseException) -> None:
        self._close()
