"""Our full Lightning training loop against a bare PyTorch loop doing the same work.

Both loops train the same `SmolLM2LitModule` (model, chunked loss, AdamW groups, LR set
per step, grad-norm clipping at 1.0) on the same batches from the same DataLoader. The
Lightning side adds what a real run has: the Trainer loop, precision plugin, the module's
per-step logging, the throughput callback and a CSV logger. Checkpointing and the progress
bar are off in both (they are I/O and terminal cost, not loop overhead).

Each repeat times steps `warmup`..`steps` of a fresh fit and of a fresh bare loop,
interleaved, and the overhead is the ratio of the median seconds per step.

    python -m benchmarks.lightning_overhead                       # tiny, 256 x 8, fp32 and bf16
    python -m benchmarks.lightning_overhead --preset smollm2_135m --seq-len 256 --batch-size 2
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time

import lightning as L
import torch
from torch.utils.data import DataLoader

from benchmarks.common import (
    add_common_args,
    add_preset_arg,
    machine_line,
    markdown_table,
    positive_int,
    setup,
)
from src.callbacks.throughput import ThroughputLogger
from src.errors import exit_on_user_error
from src.kernels import KERNELS
from src.models import SmolLM2Config
from src.tracking.csv_logger import ContinuingCSVLogger
from src.training.lit_module import SmolLM2LitModule
from src.training.lr_schedule import LRSchedule

PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


def make_module(args: argparse.Namespace) -> SmolLM2LitModule:
    torch.manual_seed(0)
    optimizer = functools.partial(torch.optim.AdamW, lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    schedule = LRSchedule(kind="wsd", warmup_steps=1, total_steps=args.steps)
    config = SmolLM2Config.from_preset(args.preset)
    tokens_per_step = args.batch_size * args.seq_len
    return SmolLM2LitModule(
        config, optimizer=optimizer, schedule=schedule, tokens_per_step=tokens_per_step, kernels=KERNELS
    )


class StepClock(L.Callback):
    """Wall time from the start of batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, *args) -> None:
        self.end = time.perf_counter()


def lightning_seconds_per_step(args, loader: DataLoader, dtype: str, log_dir: str) -> float:
    module = make_module(args)
    clock = StepClock(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu" if args.device == "cpu" else "auto",
        devices=1,
        max_steps=args.steps,
        precision=PRECISION[dtype],
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        logger=ContinuingCSVLogger(log_dir, name="csv", version=""),
        callbacks=[clock, ThroughputLogger()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, train_dataloaders=loader)
    return (clock.end - clock.start) / (args.steps - args.warmup)


def bare_seconds_per_step(args, loader: DataLoader, dtype: str, device: torch.device) -> float:
    module = make_module(args).to(device)
    optimizer = module.configure_optimizers()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    start = 0.0
    for step, batch in enumerate(loader):
        if step == args.warmup:
            start = time.perf_counter()
        if step == args.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = module.peak_lr * module.schedule(step)
        with autocast:
            loss = module.loss(batch.to(device, non_blocking=True))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / (args.steps - args.warmup)


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_args(parser, repeats=3)
    add_preset_arg(parser, "tiny")
    parser.add_argument("--seq-len", type=positive_int, default=256)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--steps", type=positive_int, default=40, help="steps per fit, warm-up included")
    args = parser.parse_args()
    if args.warmup >= args.steps:
        parser.error("--warmup must be below --steps")
    device = setup(args)
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, 49152, (args.batch_size, args.seq_len + 1), generator=generator)
        for _ in range(args.steps)
    ]
    loader = DataLoader(batches, batch_size=None, pin_memory=device.type == "cuda")
    print(machine_line(device))
    print(f"{args.preset}, {args.batch_size} x {args.seq_len} tokens per step, {args.steps} steps per run\n")
    rows = []
    for dtype in args.dtypes:
        times: dict[str, list[float]] = {"bare PyTorch": [], "Lightning": []}
        for _ in range(args.repeats):  # interleaved: bare, Lightning, bare, Lightning, ...
            times["bare PyTorch"].append(bare_seconds_per_step(args, loader, dtype, device))
            with tempfile.TemporaryDirectory() as log_dir:
                times["Lightning"].append(lightning_seconds_per_step(args, loader, dtype, log_dir))
        bare = statistics.median(times["bare PyTorch"])
        for name, seconds in times.items():
            median = statistics.median(seconds)
            spread = (max(seconds) - min(seconds)) / median
            tokens_per_s = args.batch_size * args.seq_len / median
            overhead = f"{100 * (median / bare - 1):+.1f}%"
            rows.append(
                [dtype, name, f"{tokens_per_s:,.0f}", f"{median:.4f} (±{50 * spread:.0f}%)", overhead]
            )
    print(markdown_table(["dtype", "loop", "tokens/s", "s/step (±half spread)", "vs bare"], rows))


if __name__ == "__main__":
    main()
