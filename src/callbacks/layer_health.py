"""Per-layer health at the log interval: gradient norm, weight norm and update-to-weight ratio.

One value per layer (`embed`, `blocks.<i>`, `final_norm`; `lm_head` when untied), logged as
`health/grad_norm/<layer>`, `health/weight_norm/<layer>` and `health/update_ratio/<layer>`,
so W&B puts each quantity's layers in one section and `python -m src.plot` draws a heat map.

Computed on the device only for steps that will be logged, and read with one `tolist()` at
that step: steps in between do nothing. The gradient norm is the true one, taken before
clipping (the global `grad_norm` is too). The update is exact: at a logged step the weights
are copied before the optimizer step and subtracted after it, so that step alone holds one
more copy of the weights (fp32 135M: 0.54 GB); an update rebuilt from AdamW's moments would
have to repeat the optimizer's arithmetic. Under trainer=fsdp each rank sums the squares of
its shards and one all-reduce adds them up. Under 16-mixed the gradients are still scaled by
GradScaler's factor here (fused AdamW unscales them itself), so their norms are divided by it.

Histograms, off by default (`histogram_every_n_steps`, a multiple of `every_n_steps`): per
layer, how many gradient and weight entries have each magnitude, in quarter decades from 1e-12
to 100, handed to loggers with a `log_histograms` method (W&B) as
`health/grad_histogram/<layer>` and `health/weight_histogram/<layer>`.
"""

from __future__ import annotations

import re

import lightning as L
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from src.training.value_checks import health_interval

QUANTITIES = ("grad_norm", "weight_norm", "update_ratio")
HISTOGRAM_LOG10_RANGE, HISTOGRAM_BINS = (-12.0, 2.0), 56  # quarter decades


def layer_of(name: str) -> str:
    """The layer a parameter of SmolLM2 belongs to, by its name."""
    if match := re.match(r"blocks\.(\d+)\.", name):
        return f"blocks.{match.group(1)}"
    if name.startswith("embed."):
        return "embed"
    if name.startswith("norm."):
        return "final_norm"
    return name.split(".")[0]  # lm_head when untied


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class LayerHealth(L.Callback):
    """Logs the per-layer health of every `every_n_steps`-th step (default: each log step) and
    of the run's last."""

    def __init__(self, every_n_steps: int | None = None, histogram_every_n_steps: int = 0) -> None:
        self.every_n_steps = every_n_steps
        self.histogram_every_n_steps = histogram_every_n_steps
        self._before: list[torch.Tensor] | None = None
        self._grad_sq: torch.Tensor | None = None
        self._grad_hist: torch.Tensor | None = None
        self._before_step = -1  # the step whose update `_before` measures

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.every = health_interval(
            self.every_n_steps, self.histogram_every_n_steps, trainer.log_every_n_steps
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        named = [(name, p) for name, p in pl_module.model.named_parameters() if p.requires_grad]
        self.layers = list(dict.fromkeys(layer_of(name) for name, _ in named))
        self.params = [p for _, p in named]
        device = self.params[0].device
        index = [self.layers.index(layer_of(name)) for name, _ in named]
        self.index = torch.tensor(index, device=device)
        self.index_list = index
        self.sharded = isinstance(self.params[0], DTensor)

    def _layer_sq(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """(layers,) sums of squares, float32, from one fused norm over every tensor."""
        norms = torch.stack(torch._foreach_norm(tensors)).float()  # (params,)
        sums = torch.zeros(len(self.layers), device=norms.device)
        return sums.index_add_(0, self.index, norms.square())

    def _layer_hist(self, tensors: list[torch.Tensor], scale: float = 1.0) -> torch.Tensor:
        """(layers, bins) counts of log10(|x| / scale); zeros count in the lowest bin."""
        low, high = HISTOGRAM_LOG10_RANGE
        counts = torch.zeros(len(self.layers), HISTOGRAM_BINS, device=self.index.device)
        for tensor, layer in zip(tensors, self.index_list, strict=True):
            magnitude = tensor.detach().float().abs().div(scale).clamp_min(10**low).log10()
            counts[layer] += torch.histc(magnitude.clamp_max(high), HISTOGRAM_BINS, low, high)
        return counts

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        step = trainer.global_step + 1
        if step % self.every and step != trainer.max_steps:  # the run's last step is logged too
            return
        grads = [_local(p.grad) if p.grad is not None else torch.zeros_like(_local(p)) for p in self.params]
        self._grad_sq = self._layer_sq(grads)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = 1.0 if scaler is None else scaler.get_scale()  # a host read, at a logged step only
        self._grad_sq /= scale**2
        if self.histogram_every_n_steps and step % self.histogram_every_n_steps == 0:
            self._grad_hist = self._layer_hist(grads, scale)
        self._before = [_local(p).detach().clone() for p in self.params]
        self._before_step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self._before is None:
            return
        before, self._before = self._before, None
        weight_sq = self._layer_sq(before)
        update = torch._foreach_sub_(before, [_local(p).detach() for p in self.params])
        sq = torch.stack((self._grad_sq, weight_sq, self._layer_sq(update)))  # (3, layers)
        if self.sharded:
            dist.all_reduce(sq)
        grad, weight, update_norm = sq.sqrt().unbind()
        ratio = update_norm / weight
        if trainer.global_step != self._before_step:  # a loss-spike rollback undid the step: no update
            ratio = torch.full_like(ratio, float("nan"))  # (src/training/spike.py)
        values = torch.stack((grad, weight, ratio)).tolist()  # the one host read
        pl_module.log_dict(
            {
                f"health/{quantity}/{layer}": value
                for quantity, row in zip(QUANTITIES, values, strict=True)
                for layer, value in zip(self.layers, row, strict=True)
            }
        )
        if self._grad_hist is not None:
            self._log_histograms(trainer, pl_module)

    def _log_histograms(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        counts = torch.stack((self._grad_hist, self._layer_hist([_local(p) for p in self.params])))
        self._grad_hist = None
        if self.sharded:
            dist.all_reduce(counts)
        grad_counts, weight_counts = counts.tolist()  # (layers, bins) each: a second read, at this step only
        low, high = HISTOGRAM_LOG10_RANGE
        edges = [low + (high - low) * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]  # log10
        histograms = {
            f"health/{quantity}/{layer}": (layer_counts, edges)
            for quantity, rows in (("grad_histogram", grad_counts), ("weight_histogram", weight_counts))
            for layer, layer_counts in zip(self.layers, rows, strict=True)
        }
        for logger in trainer.loggers:
            if hasattr(logger, "log_histograms"):
                logger.log_histograms(histograms, step=pl_module.steps_made)  # this step's metrics' row
