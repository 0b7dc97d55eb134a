"""The run's plan, worked out from the config before anything is built: tokens, epochs, disk, milestones.

A config says steps and batch shapes; what a researcher needs to know is what they add up to.
The seed recipe (65,536 tokens a step) for 5,000 steps on tiny Shakespeare reads the text about
a thousand times, and nothing else says so. The plan is printed before the first step, saved as
`<run>/plan.json` and in the logged run config, and `plan=true` prints it and exits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from src.data.base import DataSize

# More passes over a finite data set than this and the plan warns: the model will memorise it.
# Up to ~4 epochs repeated tokens are worth about as much as new ones (Muennighoff et al. 2023,
# "Scaling Data-Constrained Language Models"), and their worth falls off after that; the tiny
# model's val loss on tiny Shakespeare still falls at 5.3 epochs and rises by 13 (README: Results).
MAX_EPOCHS = 8
# Values in a checkpoint per parameter: the weights and AdamW's two moments (exp_avg, exp_avg_sq).
VALUES_PER_PARAMETER = 3


def bytes_per_value(precision: str) -> int:
    """`bf16-true`/`16-true` keep weights and moments in 16 bits; every other precision in fp32."""
    return 2 if precision in ("bf16-true", "16-true") else 4


def next_multiple(after: int, every: int, limit: int) -> int | None:
    """The first multiple of `every` above `after`, up to `limit`; None when there is none."""
    if every <= 0:
        return None
    step = (after // every + 1) * every
    return step if step <= limit else None


def human(count: float, unit: str = "") -> str:
    """327.7M, 1.6 GB: one decimal of the largest prefix, for quantities that span orders of magnitude."""
    for scale, prefix in ((1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "k")):
        if count >= scale:
            return f"{count / scale:.1f}{' ' if unit else ''}{prefix}{unit}"
    return f"{count:,.0f}{' ' + unit if unit else ''}"


@dataclass(frozen=True)
class Plan:
    """What the run will do, from its config and a few cheap facts (parameters, data size)."""

    parameters: int
    tokens_per_step: int  # global: all processes and micro-batches of one optimizer step
    start_step: int  # 0, or the checkpoint's step for a continuation
    start_tokens: int  # tokens the steps before start_step trained on (at their own global batch)
    max_steps: int
    data: str  # the training data, as the DataModule reads it
    epoch_tokens: int | None  # tokens of one pass over finite data; None when streaming
    peak_lr: float  # optim.lr
    lr_first_step: float  # the LR of this run's first update (a continuation's own, if it sets one)
    schedule: str
    precision: str
    checkpoint_bytes: int
    checkpoints_kept: int  # step checkpoints over the whole run (all kept) + last.ckpt
    first_sample: int | None
    first_validation: int | None
    first_checkpoint: int | None
    starts_from: str | None = None  # where the weights come from, when not from scratch or ckpt_path

    @property
    def total_tokens(self) -> int:
        """Tokens the whole run trains on, from step 0 (a continuation's earlier steps included)."""
        return self.start_tokens + (self.max_steps - self.start_step) * self.tokens_per_step

    @property
    def tokens_per_parameter(self) -> float:
        return self.total_tokens / self.parameters

    @property
    def epochs(self) -> float | None:
        return self.total_tokens / self.epoch_tokens if self.epoch_tokens else None

    def warnings(self) -> list[str]:
        epochs = self.epochs
        if epochs is None or epochs <= MAX_EPOCHS:
            return []
        fewer = self.start_step + (MAX_EPOCHS * self.epoch_tokens - self.start_tokens) // self.tokens_per_step
        steps = f"{self.max_steps - self.start_step:,} steps x {self.tokens_per_step:,} tokens"
        if self.start_step:
            steps = f"{human(self.start_tokens)} tokens to step {self.start_step:,} + {steps}"
        tokens = f"{steps} = {human(self.total_tokens)} tokens"
        return [
            f"warning: {tokens} are {epochs:,.0f} epochs of {self.data} ({self.epoch_tokens:,} training "
            f"tokens): the model will memorise it; train on more data (data=cosmopedia_v2, or data.path="
            f"<a bigger file>) or for fewer steps (trainer.max_steps={fewer:,} is {MAX_EPOCHS} epochs)"
        ]

    def rows(self) -> list[tuple[str, str]]:
        epochs = self.epochs
        steps = f"{self.max_steps:,}"
        if self.start_step:
            steps += f" ({self.max_steps - self.start_step:,} in this run, from step {self.start_step:,})"
        data = f"{self.data}: " + (
            f"{self.epoch_tokens:,} training tokens a pass, {epochs:,.1f} epochs"
            if epochs is not None
            else "streaming, epochs unknown"
        )
        kept_bytes = self.checkpoint_bytes * self.checkpoints_kept
        values = "16-bit" if bytes_per_value(self.precision) == 2 else "fp32"
        lr_shape = f"peak {self.peak_lr:.3g}, {self.schedule}"
        milestones = [self.first_sample, self.first_validation, self.first_checkpoint]
        return [
            *([("starts from", self.starts_from)] if self.starts_from else []),
            ("parameters", f"{self.parameters:,}"),
            ("tokens per step", f"{self.tokens_per_step:,} (all processes)"),
            ("steps", steps),
            ("tokens", f"{human(self.total_tokens)} ({self.tokens_per_parameter:.3g} per parameter)"),
            ("data", data),
            ("learning rate", f"{self.lr_first_step:.3g} at step {self.start_step:,} ({lr_shape})"),
            (
                "checkpoints",
                f"{self.checkpoints_kept} x {human(self.checkpoint_bytes, 'B')} = {human(kept_bytes, 'B')} "
                f"(weights + 2 AdamW moments, {values})",
            ),
            (
                "first sample / val / ckpt",
                " / ".join("-" if step is None else f"step {step:,}" for step in milestones),
            ),
        ]

    def table(self) -> str:
        rows = self.rows()
        width = max(len(name) for name, _ in rows)
        return "\n".join(
            ["plan:", *(f"  {name:<{width}}  {value}" for name, value in rows), *self.warnings()]
        )

    def to_dict(self) -> dict[str, Any]:
        derived = {"total_tokens": self.total_tokens, "tokens_per_parameter": self.tokens_per_parameter}
        return {**dataclasses.asdict(self), **derived, "epochs": self.epochs, "warnings": self.warnings()}


def make_plan(
    cfg: DictConfig,
    parameters: int,
    tokens_per_step: int,
    lr_multiplier: float,
    data: DataSize,
    start_step: int = 0,
    start_tokens: int = 0,
    starts_from: str | None = None,
) -> Plan:
    """The plan of the composed (and checked) `cfg`; `lr_multiplier` is the schedule's at `start_step`."""
    max_steps = cfg.trainer.max_steps
    callbacks = cfg.get("callbacks") or {}
    samples = callbacks.get("text_samples")
    every_ckpt = cfg.checkpoint_every if "model_checkpoint" in callbacks else 0
    step_checkpoints = max_steps // every_ckpt if every_ckpt > 0 else 0
    first_sample = None
    if samples is not None and samples.prompts:
        # a continuation samples at its next multiple, else when fit ends (src/callbacks/every_n_steps.py)
        later = next_multiple(start_step, samples.every_n_steps, max_steps) or max_steps
        first_sample = 0 if start_step == 0 else later
    fresh_validation = cfg.val_at_start and start_step == 0
    return Plan(
        parameters=parameters,
        tokens_per_step=tokens_per_step,
        start_step=start_step,
        start_tokens=start_tokens,
        max_steps=max_steps,
        data=data.name,
        epoch_tokens=data.epoch_tokens,
        peak_lr=float(cfg.optim.lr),
        lr_first_step=float(cfg.optim.lr) * lr_multiplier,
        schedule=cfg.schedule.kind,
        precision=str(cfg.trainer.precision),
        checkpoint_bytes=parameters * VALUES_PER_PARAMETER * bytes_per_value(str(cfg.trainer.precision)),
        checkpoints_kept=step_checkpoints + ("last_checkpoint" in callbacks),
        first_sample=first_sample,
        first_validation=0 if fresh_validation else next_multiple(start_step, cfg.eval_every, max_steps),
        first_checkpoint=next_multiple(start_step, every_ckpt, max_steps),
        starts_from=starts_from,
    )
