"""The LightningModule: next-token loss, AdamW groups, the LR schedule, metrics, checkpoint extras."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from src.kernels import apply_cpu_kernels, loss_matmuls
from src.kernels.loss import IGNORE_INDEX, lm_cross_entropy
from src.kernels.selection import KernelRecord
from src.lightning_compat import count_batches_as, is_log_step, log_the_last_step, set_logging_step
from src.models.config import SmolLM2Config
from src.models.smollm2 import SmolLM2
from src.training import checkpoint as ckpt
from src.training.lr_schedule import LRSchedule
from src.training.nonfinite import NonfiniteGuard
from src.training.parallelize import apply_activation_checkpointing, apply_compile, apply_fsdp
from src.training.spike import SpikeGuard
from src.training.spike_rule import SpikeRule


class SmolLM2LitModule(L.LightningModule):
    """Trains a SmolLM2 decoder on (B, T + 1) token windows.

    The LR is set before every optimizer step from `schedule(global_step)`, so the
    schedule needs no state of its own and a resumed run continues it exactly. Nothing is
    read off the device between log intervals: the step's loss, gradient norm and
    non-finite record stay there until a log step reduces and logs them.
    `nonfinite` ("stop" or "skip") says what a step with NaN/inf gradients does (src/training/nonfinite.py).
    `spike` says what a loss spike does (src/training/spike.py: nothing, warn, or roll back).
    `kernels` names the CPU kernels swapped into the model (src/kernels; none: plain PyTorch),
    or records them with the machine and shapes they were chosen for, which checkpoints keep.
    `tokens_per_step` is this run's global batch in tokens; `tokens_seen` adds its steps to the
    count the checkpoint kept, so a continuation that changes the batch counts each step at the
    size it had.
    """

    def __init__(
        self,
        model_config: SmolLM2Config,
        optimizer: functools.partial,
        schedule: LRSchedule,
        tokens_per_step: int,
        tokenizer: str | None = None,
        compile: bool = False,
        activation_checkpointing: bool = False,
        kernels: KernelRecord | Sequence[str] = (),
        wandb_run_id: str | None = None,
        cli_overrides: list[str] | None = None,
        nonfinite: str = "stop",
        spike: SpikeRule | None = None,
    ) -> None:
        super().__init__()
        self.config = model_config
        self.kernel_record = kernels if isinstance(kernels, KernelRecord) else None
        kernels = kernels.kept if isinstance(kernels, KernelRecord) else kernels
        self.model = apply_cpu_kernels(SmolLM2(model_config), kernels)
        if activation_checkpointing:
            apply_activation_checkpointing(self.model)
        # Decided here, on the whole model: a sharded run's optimizer sees the same names.
        self.no_decay = {name for name, p in self.named_parameters() if p.dim() < 2}  # norms
        self.optimizer_factory, self.schedule = optimizer, schedule
        self.tokens_per_step = tokens_per_step
        self._tokens_at = (0, 0)  # (optimizer step, tokens seen by then): the checkpoint's count
        self.peak_lr = float(optimizer.keywords["lr"])
        self.nonfinite = nonfinite
        self.guard = NonfiniteGuard(nonfinite)
        self.spike = SpikeGuard(spike or SpikeRule())
        self.tokenizer_name, self.wandb_run_id = tokenizer, wandb_run_id
        self.cli_overrides = list(cli_overrides or [])
        self.compile_model = compile
        self.cross_entropy = lm_cross_entropy
        self.loss_matmuls = loss_matmuls(kernels)  # the loss's matmuls follow the linear layers
        self._step_loss: torch.Tensor | None = None
        self._grad_norm: torch.Tensor | None = None
        self._lr = self.peak_lr
        self._report_due = False
        self._val_sum: torch.Tensor | None = None  # (summed loss, windows) of this rank's validation so far
        self._val_windows: int | None = None  # the last validation's, all ranks (checkpointed)

    def configure_model(self) -> None:
        """Compile, then under trainer=fsdp shard (Lightning then sets `device_mesh`).

        Lightning calls this for every fit or validate: compiling again only recompiles, and
        a sharded model stays as it is.
        """
        if isinstance(self.model, FSDPModule):
            return
        if self.compile_model:
            apply_compile(self.model)  # in place: the checkpoint keys stay those of the plain model
            # The loss's softmax, gather, scatter and cast fuse into one pass per chunk, a
            # large share of the loss's time on a 49,152-wide head (benchmarks/README.md).
            self.cross_entropy = torch.compile(lm_cross_entropy)
        if self.device_mesh is not None:
            param_dtype = torch.bfloat16 if self.trainer.precision == "bf16-mixed" else None
            apply_fsdp(self.model, self.device_mesh["data_parallel"], param_dtype)

    def loss(self, batch: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token loss of (B, T + 1) windows; `counted` (B,) leaves out the windows that
        only pad a rank's share of the validation set (src/data/windows.py: OrderedWindows)."""
        inputs, targets = batch[:, :-1], batch[:, 1:]  # (B, T) each
        if counted is not None:
            targets = targets.masked_fill(~counted[:, None], IGNORE_INDEX)
        hidden = self.model.hidden_states(inputs)  # (B, T, C)
        return self.cross_entropy(hidden, self.model.lm_head.weight, targets, **self.loss_matmuls)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self.loss(batch)
        detached = loss.detach()
        self._step_loss = detached if self._step_loss is None else self._step_loss + detached
        return loss

    @property
    def steps_made(self) -> int:
        """Optimizer steps made so far, counting those a loss-spike rollback undid: the step
        every logger files a row under (0 before training), so it only goes up."""
        return self.trainer.global_step + self.spike.rewound_steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        set_logging_step(self.trainer, self.steps_made)  # Lightning's log interval counts these

    def on_train_start(self) -> None:
        log_the_last_step(self.trainer)
        # A continuation's accumulation may differ from its checkpoint's (another data.batch_size
        # or device count under tokens_per_step): count the steps so far in today's micro-batches.
        count_batches_as(self.trainer, self.trainer.global_step * self.trainer.accumulate_grad_batches)
        self.spike.start(self)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm=None,
    ) -> None:
        """Clip by global norm, keep the norm for logging, and have a non-finite one skip the step.

        fp16's GradScaler finds and skips overflowing steps itself, so the guard stands aside
        there; Lightning leaves unscaling to fused AdamW's step, so it is done here, before clipping.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(optimizer)
        max_norm = gradient_clip_val if gradient_clip_val else float("inf")
        self._grad_norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm)
        if isinstance(self._grad_norm, DTensor):  # trainer=fsdp: the norm over every rank's shards
            self._grad_norm = self._grad_norm.full_tensor()
        if scaler is None:
            self.guard.check(self._grad_norm, optimizer, self.trainer.global_step)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        self._lr = self.peak_lr * self.schedule(self.trainer.global_step)
        for group in optimizer.param_groups:
            group["lr"] = self._lr
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        step = self.trainer.global_step + 1  # global_step moves after this hook
        self.spike.observe(self._step_loss / self.trainer.accumulate_grad_batches, step)
        stopping = self.trainer.should_stop and self.trainer.log_every_n_steps > 0  # Lightning logs then too
        logged = is_log_step(self.trainer, step) or stopping  # the steps Lightning logs
        if logged:
            self._log_interval()
            self._report_due = True
        if logged or step == self.trainer.max_steps:  # the last step, logged or not (interval 0)
            self.spike.decide(self, step)  # before any callback saves this step
        if logged:
            self._log_spikes()  # this interval's decision included
        self._step_loss = None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Skipped steps reach the host here, where global_step already counts the step just made."""
        if self._report_due:
            self._report_due = False
            self.guard.report(self.trainer.global_step)
        self.spike.raise_if_stopped()

    def _log_interval(self) -> None:
        """Logs this step's metrics (the loss averaged over ranks: one all-reduce per interval).

        Logged here, after the update and before any callback's `on_train_batch_end`, so
        that callbacks reading the logged values at the log step see this step's. None is
        marked `prog_bar`: Lightning turns those into Python numbers after every batch.
        """
        loss = self._step_loss / self.trainer.accumulate_grad_batches
        # The row's step (Lightning's own is one lower in training; global_step moves after this hook)
        self.log("step", float(self.steps_made + 1))
        self.log("train/loss", self.trainer.strategy.reduce(loss, reduce_op="mean"))
        self.log("lr", self._lr)
        if self._grad_norm is not None:
            self.log("grad_norm", self._grad_norm)
        if self.nonfinite == "skip" and (skipped := self.guard.skipped()) is not None:
            self.log("nonfinite_skipped", skipped.float())

    def _log_spikes(self) -> None:
        if self.spike.active:
            self.log("spike/spikes", float(self.spike.spikes))
        if self.spike.rule.mode == "rollback":
            self.log("spike/skipped_batches", float(self.trainer.datamodule.skipped_batches))

    def tokens_seen(self) -> int:
        """Tokens the optimizer steps so far trained on, over all processes."""
        step, tokens = self._tokens_at
        return tokens + (self.trainer.global_step - step) * self.tokens_per_step

    def on_train_end(self) -> None:
        self.guard.report(self.trainer.global_step)  # steps skipped after the last log step

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        windows, counted = batch
        count = counted.sum()
        loss_and_count = torch.stack([self.loss(windows, counted).detach() * count, count])
        self._val_sum = loss_and_count if self._val_sum is None else self._val_sum + loss_and_count

    def on_validation_epoch_end(self) -> None:
        if self._val_sum is None:
            return
        # (summed loss, counted windows) over all ranks: the mean of the windows read, however many ranks
        total, windows = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        mean = total / windows
        self.log("step", float(self.steps_made))  # the weights' step; Lightning's is one lower in fit
        self.log("val/loss", mean, prog_bar=True)
        self.log("val/ppl", mean.exp())
        if not self.trainer.sanity_checking:
            self._note_validation_windows(int(windows))
        self._val_sum = None

    def _note_validation_windows(self, windows: int) -> None:
        """`trainer.limit_val_batches` counts batches: a continuation with another data.batch_size
        or device count validates on other windows, and its val/loss is another measure."""
        before = self._val_windows
        self._val_windows = windows
        if before is not None and before != windows:
            rank_zero_warn(
                f"this validation read {windows:,} windows and the ones before {before:,}, so val/loss "
                f"is not comparable across step {self.trainer.global_step}; set trainer.limit_val_batches "
                f"to make batches x data.batch_size x devices = {before:,} windows"
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW with weight decay on matrices only (not norms), groups named before sharding.

        Fused on every device: its `found_inf` skips a non-finite step exactly, on the device.
        """
        params = [(name, p) for name, p in self.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for name, p in params if name not in self.no_decay]},
            {"params": [p for name, p in params if name in self.no_decay], "weight_decay": 0.0},
        ]
        return self.optimizer_factory(groups, fused=True)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[ckpt.MODEL_CONFIG] = self.config.to_dict()
        checkpoint[ckpt.TOKENIZER] = self.tokenizer_name
        checkpoint[ckpt.WANDB_RUN_ID] = self.wandb_run_id
        checkpoint[ckpt.LR_SCHEDULE] = dataclasses.asdict(self.schedule)
        checkpoint[ckpt.OVERRIDES] = self.cli_overrides
        checkpoint[ckpt.SKIPPED_STEPS] = self.guard.total()
        checkpoint[ckpt.TOKENS_SEEN] = self.tokens_seen()
        if self._val_windows is not None:
            checkpoint[ckpt.VAL_WINDOWS] = self._val_windows
        if self.spike.active:
            checkpoint[ckpt.SPIKE] = self.spike.state_dict()
        if self.kernel_record is not None:
            checkpoint[ckpt.CPU_KERNELS] = self.kernel_record.to_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called before the optimizer state is restored; a group's saved flags replace the
        # built ones there, and a checkpoint of unfused AdamW would make it unfused again.
        for state in checkpoint.get("optimizer_states", []):
            for group in state["param_groups"]:
                group["fused"] = True
        self.guard = NonfiniteGuard(self.nonfinite, checkpoint.get(ckpt.SKIPPED_STEPS, 0))
        self._tokens_at = (checkpoint["global_step"], ckpt.tokens_seen(checkpoint, self.tokens_per_step))
        self._val_windows = checkpoint.get(ckpt.VAL_WINDOWS)
        if self.spike.active and ckpt.SPIKE in checkpoint:
            self.spike.load_state_dict(checkpoint[ckpt.SPIKE])
