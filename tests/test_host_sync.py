"""Between log intervals an optimizer step reads nothing off the device: a census of host reads.

On a GPU each read (`.item()`, `bool(t)`, `.tolist()`, a blocking copy to the CPU, ...) makes
the host wait for the device. A CPU run cannot observe waiting, so the census counts the
calls themselves, with a TorchFunctionMode that covers every Python-level tensor call of
the loop iteration: Lightning's own work, the loggers, the progress bar and our callbacks.
"""

from __future__ import annotations

import traceback
from collections import defaultdict
from typing import Any

import lightning as L
import pytest
import torch
from torch.overrides import TorchFunctionMode

from tests.training import fast_overrides, run_training, write_text

# Calls that hand a tensor's value to Python, or wait for a data-dependent shape.
HOST_READS = frozenset(
    "item tolist numpy cpu __array__ __bool__ __float__ __int__ __index__ __complex__ __format__ __repr__ "
    "__str__ is_nonzero equal allclose nonzero masked_select unique".split()
)


def _copy_to_cpu(args: tuple, kwargs: dict) -> bool:
    """A `.to()` from another device to the CPU; on a CPU run a `.to("cpu")` is not told apart from
    a move to the training device (free on a GPU), so only `.cpu()` is counted there."""
    target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
    return target is not None and torch.device(target).type == "cpu" and args[0].device.type != "cpu"


class HostReads(TorchFunctionMode):
    """Records each host read as 'name (file:line)' of the first caller outside torch.

    Reads made while a DataLoader builds a batch are left out: it works on host tensors
    by contract (they reach the device later, in `batch_to_device`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in HOST_READS or (name == "to" and _copy_to_cpu(args, kwargs)):
            stack = traceback.extract_stack()[:-1]
            if not any("/torch/utils/data/" in frame.filename for frame in stack):
                caller = next((f for f in reversed(stack) if "/torch/" not in f.filename), None)
                self.reads.append(f"{name} ({caller.filename}:{caller.lineno})" if caller else name)
        return func(*args, **kwargs)


class HostReadCensus(L.Callback):
    """Host reads per optimizer step, from one batch start to the next (the whole loop iteration).

    Listed after the default callbacks, so its window also holds theirs: the next batch's
    `on_train_batch_start` hooks of the others run before it closes the window.
    """

    runs: list[HostReadCensus] = []

    def __init__(self) -> None:
        self.reads: dict[int, list[str]] = defaultdict(list)
        self._mode: HostReads | None = None
        self._step = 0
        HostReadCensus.runs.append(self)

    def _close(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self.reads[self._step] += self._mode.reads
            self._mode = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._close()
        self._step = trainer.global_step + 1  # the optimizer step this batch belongs to
        self._mode = HostReads()
        self._mode.__enter__()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error: BaseException) -> None:
        self._close()


@pytest.fixture(scope="module")
def census_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("census")
    HostReadCensus.runs.clear()
    log, every = 4, 6  # log steps 4, 8, 12; eval, checkpoint and samples at 6, 12
    overrides = fast_overrides(
        tmp_path,
        write_text(tmp_path / "input.txt"),
        "trainer.max_steps=12",
        "trainer.accumulate_grad_batches=2",
        f"trainer.log_every_n_steps={log}",
        f"eval_every={every}",
        f"checkpoint_every={every}",
        f"callbacks.text_samples.every_n_steps={every}",
        "callbacks.progress_bar.refresh_rate=1",  # the bar redraws after every batch
        "nonfinite=skip",  # logs its count as well
        "+callbacks.census._target_=tests.test_host_sync.HostReadCensus",
    )
    run_training(overrides)
    (census,) = HostReadCensus.runs
    return census.reads


def test_no_host_reads_between_log_intervals(census_run):
    quiet = [1, 2, 3, 5, 7, 9, 10, 11]
    assert {step: census_run[step] for step in quiet} == {step: [] for step in quiet}


def test_the_census_sees_the_reads_of_log_steps(census_run):
    assert all(census_run[step] for step in (4, 8, 12)), dict(census_run)
    assert any("nonfinite.py" in read for read in census_run[4])  # the guard's one read per interval
