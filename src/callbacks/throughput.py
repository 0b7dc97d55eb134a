"""Tokens seen, tokens/s and MFU, read off the clock only at the log interval."""

from __future__ import annotations

import time

import lightning as L
import torch

from src.training.hardware import peak_flops


class ThroughputLogger(L.Callback):
    """Counts tokens from the batch shape and step counter (no device sync) and logs every
    `log_every_n_steps`.

    A batch holds (B, T + 1) token windows of one shape for the whole run, so the shape
    alone gives the tokens per optimizer step; the config's seq_len and batch_size are not
    needed. MFU uses 6N + 12·L·C·T FLOPs per token (forward + backward, attention included)
    and the device's peak for the run's precision; it is left out where the peak is unknown.
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        self.peak_tflops = peak_tflops
        self._t0: float | None = None
        self._step0 = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.num_parameters = sum(p.numel() for p in pl_module.model.parameters())
        peak = self.peak_tflops or peak_flops(trainer.strategy.root_device, trainer.precision)
        self.peak = peak * 1e12 if peak else None
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
        metrics = {"tokens_seen": float(step * tokens_per_step), "tokens_per_s": tokens_per_s}
        if self.peak:
            config = pl_module.config
            flops_per_token = 6 * self.num_parameters + 12 * config.num_layers * config.hidden_size * seq_len
            metrics["mfu"] = tokens_per_s * flops_per_token / self.peak
        pl_module.log_dict(metrics, prog_bar=False)
        pl_module.log("tok/s", tokens_per_s, prog_bar=True, logger=False)
        self._t0, self._step0 = now, step
