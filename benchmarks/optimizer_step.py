"""What AdamW's step costs on this machine: `python -m benchmarks.optimizer_step`

Training always builds AdamW with `fused=True`, because its `found_inf` skips a non-finite
step on the device without a host sync (src/training/nonfinite.py). This prints the step
time of each implementation on a preset's parameters (gradients set, state warm) and its
ratio to torch's default on this device (the reference), measured in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import add_preset_arg, non_negative_int, positive_int
from src.errors import exit_on_user_error
from src.models import SmolLM2, SmolLM2Config

IMPLEMENTATIONS = {
    "torch default": {},
    "for-loop": {"foreach": False, "fused": False},
    "foreach": {"foreach": True},
    "fused (ours)": {"fused": True},
}


def step_seconds(params: list[torch.nn.Parameter], options: dict, warmup: int, repeats: int) -> list[float]:
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, **options)
    for _ in range(warmup):
        optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arg(parser, "smollm2_135m")
    parser.add_argument("--warmup", type=non_negative_int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = SmolLM2(SmolLM2Config.from_preset(args.preset))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    numel = sum(p.numel() for p in params)
    threads = torch.get_num_threads()
    print(f"{args.preset}: {numel:,} parameters in {len(params)} tensors, fp32, {threads} threads")
    print("\n| AdamW | s/step (median) | spread | vs torch default |\n|---|---|---|---|")
    reference = None
    for name, options in IMPLEMENTATIONS.items():
        times = step_seconds(params, options, args.warmup, args.repeats)
        median = statistics.median(times)
        reference = reference or median
        spread = (max(times) - min(times)) / 2 / median
        print(f"| {name} | {median:.4f} | ±{spread:.0%} | {reference / median:.2f}x |")


if __name__ == "__main__":
    main()
