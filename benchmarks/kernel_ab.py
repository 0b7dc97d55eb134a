"""Two sets of CPU kernels in the same training step, timed against each other.

The kernel probes (src/kernels/probes.py) time one layer's share of a step; this times the
whole step, forward + loss + backward + AdamW, of two copies of one model with different
`kernels` applied as named (no measuring, as `kernels_policy=always`), in one process.
Rounds alternate their order (A B, B A, ...) and each round gives one B/A ratio, so the
host's drift, which moves a whole step by several percent between runs, cancels.

    python -m benchmarks.kernel_ab --dtype fp32 --a onednn_linear --b onednn_linear_torch_wgrad
    python -m benchmarks.kernel_ab --dtype fp32 --a "" --b onednn_linear_torch_wgrad   # vs PyTorch
"""

from __future__ import annotations

import argparse
import copy
import statistics

from benchmarks.common import (
    add_host_args,
    machine_line,
    markdown_table,
    non_negative_int,
    positive_int,
    setup,
    time_interleaved,
)
from benchmarks.train_step import add_our_step_args, our_step, plain_model_and_batch
from src.errors import UserError, exit_on_user_error
from src.kernels import apply_cpu_kernels, check_kernels


def kernel_list(text: str) -> list[str]:
    """'a,b' -> ['a', 'b']; '' -> [] (plain PyTorch)."""
    return [name.strip() for name in text.split(",") if name.strip()]


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_our_step_args(parser)
    parser.add_argument("--a", default="", help="comma-separated kernels of A (empty: plain PyTorch)")
    parser.add_argument("--b", required=True, help="comma-separated kernels of B")
    parser.add_argument("--warmup", type=non_negative_int, default=2, help="untimed steps of each")
    parser.add_argument("--rounds", type=positive_int, default=6, help="timed steps of each, one per round")
    add_host_args(parser)
    parser.set_defaults(device="cpu")
    args = parser.parse_args()
    sets = {"A": kernel_list(args.a), "B": kernel_list(args.b)}
    for kernels in sets.values():
        try:
            check_kernels(kernels)
        except UserError as err:
            parser.error(str(err))
    device = setup(args)

    plain, inputs, targets = plain_model_and_batch(args, device)
    steps = {
        name: our_step(
            apply_cpu_kernels(copy.deepcopy(plain), kernels), kernels, inputs, targets, args, device
        )
        for name, kernels in sets.items()
    }
    timings = time_interleaved(steps, device, args.warmup, args.rounds, alternate=True)
    ratios = [b / a for a, b in zip(timings["A"].seconds, timings["B"].seconds, strict=True)]

    print(f"## Kernels A/B in one training step: {args.preset}, {args.shape}, {args.dtype}\n")
    print(f"machine: {machine_line(device)}")
    print(f"warm-up {args.warmup}, {args.rounds} rounds, order alternating\n")
    rows = [
        [name, ", ".join(sets[name]) or "none (PyTorch)", timing.cell()] for name, timing in timings.items()
    ]
    print(markdown_table(["", "kernels", "s/step (±half spread)"], rows))
    print(
        f"\nB/A per round: median {statistics.median(ratios):.3f}x "
        f"(range {min(ratios):.3f}-{max(ratios):.3f}); below 1: B is faster"
    )


if __name__ == "__main__":
    main()
