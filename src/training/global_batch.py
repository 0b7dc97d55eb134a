"""The global batch: how many tokens one optimizer step sees, whatever the number of processes.

A recipe states `tokens_per_step`; the gradient accumulation follows from the processes
(devices x nodes) and the micro-batch (`data.batch_size` x `data.seq_len`), so moving the
seed recipe from one GPU to eight keeps its 65,536 tokens per step and its learning rate.
`tokens_per_step=null` keeps `trainer.accumulate_grad_batches` as given, and the global
batch then grows with the processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError
from src.training.hardware import uses_cuda


def process_count(trainer: DictConfig) -> int:
    """Training processes the Lightning `trainer` settings start: devices per node x nodes."""
    devices, nodes = trainer.get("devices", 1), trainer.get("num_nodes", 1)
    if devices in ("auto", -1, "-1"):
        devices = torch.cuda.device_count() if uses_cuda(trainer.accelerator) else 1
    if OmegaConf.is_list(devices):
        count = len(devices)
    elif isinstance(devices, str) and "," in devices:  # Lightning's "0,1" picks GPUs by index
        count = len([d for d in devices.split(",") if d.strip()])
    else:
        count = int(devices)
    return max(1, count) * int(nodes)


@dataclass(frozen=True)
class GlobalBatch:
    sequences: int  # per micro-batch and process
    seq_len: int
    accumulation: int
    processes: int

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len * self.accumulation * self.processes

    def __str__(self) -> str:
        return (
            f"{self.tokens:,} tokens per optimizer step = {self.sequences} sequences x {self.seq_len:,} "
            f"tokens x {self.accumulation} micro-batches x {self.processes} process(es)"
        )


def resolve_global_batch(cfg: DictConfig, overridden: set[str]) -> GlobalBatch:
    """The run's global batch; sets `trainer.accumulate_grad_batches` from `tokens_per_step`.

    `overridden` holds the keys given on the command line: an explicit accumulation next to a
    stated `tokens_per_step` is ambiguous, so it is refused rather than silently ignored.
    """
    processes = process_count(cfg.trainer)
    sequences, seq_len = cfg.data.batch_size, cfg.data.seq_len
    target = cfg.get("tokens_per_step")
    if target is None:
        return GlobalBatch(sequences, seq_len, cfg.trainer.accumulate_grad_batches, processes)
    if "trainer.accumulate_grad_batches" in overridden:
        raise UserError(
            f"trainer.accumulate_grad_batches and tokens_per_step={target} both set the global batch; "
            "drop one (tokens_per_step=null keeps the accumulation as given)"
        )
    micro = sequences * seq_len * processes
    if target % micro:
        raise UserError(
            f"tokens_per_step={target:,} is not a multiple of one micro-batch on every process "
            f"({sequences} x {seq_len:,} tokens x {processes} process(es) = {micro:,}); "
            f"{fitting_batch_size(target, seq_len, processes, sequences)}"
        )
    cfg.trainer.accumulate_grad_batches = target // micro
    return GlobalBatch(sequences, seq_len, target // micro, processes)


def fitting_batch_size(target: int, seq_len: int, processes: int, sequences: int) -> str:
    """The fix to suggest: the largest `data.batch_size` up to today's that divides the step."""
    if target % (seq_len * processes):
        return "change data.seq_len or tokens_per_step"
    per_process = target // (seq_len * processes)
    best = max(b for b in range(1, min(sequences, per_process) + 1) if per_process % b == 0)
    return f"pass data.batch_size={best}, or change tokens_per_step"
