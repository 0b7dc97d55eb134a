"""Tokens seen, tokens/s (global and per device), MFU, step time, data wait and peak memory,
read off the clock only at the log interval."""

from __future__ import annotations

import resource
import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from src.lightning_compat import is_log_step
from src.training.device_peaks import peak_flops


def tokens_per_step(trainer: L.Trainer, batch: torch.Tensor) -> int:
    """Tokens one optimizer step trains on over all processes, from a (B, T + 1) batch's shape."""
    rows, seq_len = batch.shape[0], batch.shape[1] - 1
    return rows * seq_len * trainer.accumulate_grad_batches * trainer.world_size


def peak_memory_gib(device: torch.device) -> float:
    """The most memory this process has held: CUDA's allocator peak (a host-side counter, no
    sync), or on the CPU the process's peak resident set (Linux reports KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class ThroughputLogger(L.Callback):
    """Counts tokens from the batch shape and step counter (no device sync) and logs every
    `log_every_n_steps` and at the last step.

    A batch holds (B, T + 1) token windows of one shape for the whole run, so the shape
    alone gives the tokens per optimizer step; the config's seq_len and batch_size are not
    needed. MFU is one device's model FLOP/s over that device's peak for the run's precision
    (`SmolLM2Config.training_flops_per_token`, N counted from the config, so a sharded model
    counts whole); it is left out, with one message, where the peak is unknown.

    `step_time_s` is the interval's wall time per optimizer step (validation left out, and the
    work at train start: a step-0 evaluation or sample, the data loader's start);
    `data_wait_fraction` the share of it the host spent between one batch's end and the next
    one's start: fetching the batch, and also any checkpoint save, sampling or downstream
    evaluation done in that gap. Near 0, the device (or the host's launching of work) sets the
    pace; near 1, the data loader does. On a GPU the host runs ahead and waits at the log
    step's read instead, so a data loader that keeps up shows as a small fraction.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._step0 = 0
        self._batch_end: float | None = None
        self._waited = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        self.peak = self.peak_tflops * 1e12 if self.peak_tflops else peak_flops(device, trainer.precision)
        if self.peak is None and device.type == "cuda" and "32" not in str(trainer.precision):
            rank_zero_info(
                f"mfu: no peak known for {torch.cuda.get_device_name(device)!r}; "
                "pass callbacks.throughput.peak_tflops=<its dense bf16 TFLOP/s> to log it"
            )
        self._t0, self._step0, self._batch_end, self._waited = None, trainer.global_step, None, 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        spent = time.perf_counter() - self._val_t0  # validation time is not training time
        if self._t0 is not None:
            self._t0 += spent
        if self._batch_end is not None:
            self._batch_end += spent

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: torch.Tensor, batch_idx: int
    ) -> None:
        if self._t0 is None:  # the clock starts at the first batch: what ran at train start is setup
            self._t0 = time.perf_counter()
        if self._batch_end is not None:
            self._waited += time.perf_counter() - self._batch_end

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: torch.Tensor, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._step0 or not is_log_step(trainer, step):
            self._batch_end = time.perf_counter()
            return
        seq_len = batch.shape[1] - 1  # (B, T + 1)
        per_step = tokens_per_step(trainer, batch)
        now = time.perf_counter()
        tokens_per_s = (step - self._step0) * per_step / (now - self._t0)
        per_device = tokens_per_s / trainer.world_size
        metrics = {
            "tokens_seen": float(pl_module.tokens_seen()),
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device,
            "step_time_s": (now - self._t0) / (step - self._step0),
            "data_wait_fraction": self._waited / (now - self._t0),
            "peak_memory_gib": peak_memory_gib(trainer.strategy.root_device),
        }
        if self.peak:
            metrics["mfu"] = per_device * pl_module.config.training_flops_per_token(seq_len) / self.peak
        pl_module.log_dict(metrics)  # not prog_bar: Lightning would read it back every batch
        self._t0, self._step0, self._waited = now, step, 0.0
        self._batch_end = time.perf_counter()
