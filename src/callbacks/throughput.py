"""Tokens seen, tokens/s (global and per device) and MFU, read off the clock only at the log interval."""

from __future__ import annotations

import time

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from src.training.device_peaks import peak_flops


class ThroughputLogger(L.Callback):
    """Counts tokens from the batch shape and step counter (no device sync) and logs every
    `log_every_n_steps`.

    A batch holds (B, T + 1) token windows of one shape for the whole run, so the shape
    alone gives the tokens per optimizer step; the config's seq_len and batch_size are not
    needed. MFU is one device's model FLOP/s over that device's peak for the run's precision
    (`SmolLM2Config.training_flops_per_token`, N counted from the config, so a sharded model
    counts whole); it is left out, with one message, where the peak is unknown.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._step0 = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = trainer.strategy.root_device
        self.peak = self.peak_tflops * 1e12 if self.peak_tflops else peak_flops(device, trainer.precision)
        if self.peak is None and device.type == "cuda" and "32" not in str(trainer.precision):
            rank_zero_info(
                f"mfu: no peak known for {torch.cuda.get_device_name(device)!r}; "
                "pass callbacks.throughput.peak_tflops=<its dense bf16 TFLOP/s> to log it"
            )
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:  # validation time is not training time
            self._t0 += time.perf_counter() - self._val_t0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: torch.Tensor, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._step0 or step % trainer.log_every_n_steps:
            return
        rows, seq_len = batch.shape[0], batch.shape[1] - 1  # (B, T + 1)
        tokens_per_step = rows * seq_len * trainer.accumulate_grad_batches * trainer.world_size
        now = time.perf_counter()
        tokens_per_s = (step - self._step0) * tokens_per_step / (now - self._t0)
        per_device = tokens_per_s / trainer.world_size
        metrics = {
            "tokens_seen": float(step * tokens_per_step),
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_device": per_device,
        }
        if self.peak:
            metrics["mfu"] = per_device * pl_module.config.training_flops_per_token(seq_len) / self.peak
        pl_module.log_dict(metrics)  # not prog_bar: Lightning would read it back every batch
        self._t0, self._step0 = now, step
