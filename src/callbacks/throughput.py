"""Tokens seen, tokens/s and MFU, read off the clock only at the log interval."""

from __future__ import annotations

import time

import lightning as L

from src.training.hardware import peak_flops


class ThroughputLogger(L.Callback):
    """Counts tokens from the step counter (no device sync) and logs every `log_every_n_steps`.

    MFU uses 6N + 12·L·C·T FLOPs per token (forward + backward, attention included) and
    the device's peak for the run's precision; it is left out where the peak is unknown.
    """

    def __init__(self, seq_len: int, batch_size: int, peak_tflops: float | None = None) -> None:
        self.seq_len, self.batch_size, self.peak_tflops = seq_len, batch_size, peak_tflops
        self._t0: float | None = None
        self._step0 = 0

    def tokens_per_step(self, trainer: L.Trainer) -> int:
        return self.seq_len * self.batch_size * trainer.accumulate_grad_batches * trainer.world_size

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        config = pl_module.config
        n = sum(p.numel() for p in pl_module.model.parameters())
        self.flops_per_token = 6 * n + 12 * config.num_layers * config.hidden_size * self.seq_len
        peak = self.peak_tflops or peak_flops(trainer.strategy.root_device, trainer.precision)
        self.peak = peak * 1e12 if peak else None
        self._t0, self._step0 = time.perf_counter(), trainer.global_step

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:  # validation time is not training time
            self._t0 += time.perf_counter() - self._val_t0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if step == self._step0 or step % trainer.log_every_n_steps:
            return
        now = time.perf_counter()
        tokens_per_s = (step - self._step0) * self.tokens_per_step(trainer) / (now - self._t0)
        metrics = {"tokens_seen": float(step * self.tokens_per_step(trainer)), "tokens_per_s": tokens_per_s}
        if self.peak:
            metrics["mfu"] = tokens_per_s * self.flops_per_token / self.peak
        pl_module.log_dict(metrics, prog_bar=False)
        pl_module.log("tok/s", tokens_per_s, prog_bar=True, logger=False)
        self._t0, self._step0 = now, step
