"""Where one CPU training step of ours spends its time: torch.profiler's self time per op.

The step is the one `benchmarks.train_step` times (forward + loss + backward + AdamW), with
the kernels training keeps for this shape and dtype. Self time excludes the ops an op
calls, so the rows add up to the step; the profiler itself adds a few percent.
Each step is profiled on its own, after one profiled step that is thrown away, and the
page faults of the profiled steps are printed: a step that faults where an unprofiled one
does not is not the step we train with (`profiled_self_times`).
`--by-shape` splits each op by its input shapes, `--by-caller` by the op or autograd
node that called it (which cast, which backward).

    python -m benchmarks.step_profile                       # smollm2_135m, 2x1024, bf16
    python -m benchmarks.step_profile --dtype fp32 --by-caller --rows 40
"""

from __future__ import annotations

import argparse
import gc
import time
from collections import defaultdict
from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    DTYPES,
    add_host_args,
    machine_line,
    markdown_table,
    page_faults,
    positive_int,
    setup,
)
from benchmarks.train_step import add_our_step_args, our_step, plain_model_and_batch
from src.errors import exit_on_user_error
from src.kernels import KERNELS, apply_cpu_kernels
from src.kernels.probes import Workload
from src.kernels.selection import choose_kernels, kept, summary

MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::addmm_", "aten::baddbmm")
MATMULS += ("mkldnn::_linear_pointwise",)  # the oneDNN linear kernels' fp32 matmuls
_WRAPPERS = {"aten::to", "aten::_to_copy", "aten::contiguous"}  # ops that only call a copy


def _key(event: object, by_shape: bool, by_caller: bool) -> tuple[str, ...]:
    key = [event.name]
    if by_shape:
        key.append(str(event.input_shapes))
    if by_caller:
        parent = event.cpu_parent
        while parent is not None and parent.name in _WRAPPERS:
            parent = parent.cpu_parent  # past the cast or copy wrapper, to who asked for it
        key.append(parent.name if parent is not None else "")
    return tuple(key)


def profiled_self_times(
    step: Callable[[], object], steps: int, by_shape: bool, by_caller: bool
) -> tuple[dict[tuple[str, ...], float], dict[tuple[str, ...], int], int]:
    """Self time (us) and calls per op key, summed over `steps` profiled steps, and the page
    faults those steps took.

    One profiler per step, freed before the next, after a first profiled step thrown away.
    The profiler keeps its events in the process heap, where they land in the holes the
    step's freed large tensors left (training keeps freed memory, `keep_freed_host_memory`):
    under one profiler for several steps each step page-faulted its large tensors in anew,
    and the ops writing them read several times their unprofiled time (benchmarks/README.md,
    "The step profile without the profiler's page faults"). Freed, the events' memory
    becomes one hole again; the profiler's first use leaves memory of its own.
    """
    self_us: dict[tuple[str, ...], float] = defaultdict(float)
    calls: dict[tuple[str, ...], int] = defaultdict(int)
    faults = 0
    for index in range(steps + 1):
        before = page_faults()
        with profile(activities=[ProfilerActivity.CPU], record_shapes=by_shape) as prof:
            step()
        if index > 0:
            faults += page_faults() - before
            for event in prof.events():
                key = _key(event, by_shape, by_caller)
                self_us[key] += event.self_cpu_time_total
                calls[key] += 1
        del prof
        gc.collect()  # the events hold each other (parent, children): only the collector frees them
    return self_us, calls, faults


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_our_step_args(parser)
    parser.add_argument(
        "--warmup",
        type=positive_int,
        default=3,
        help="unprofiled steps first, at least 1: the last one is the unprofiled time",
    )
    parser.add_argument("--steps", type=positive_int, default=2, help="profiled steps, averaged")
    parser.add_argument("--rows", type=positive_int, default=25, help="ops listed, by self time")
    parser.add_argument("--by-shape", action="store_true", help="one row per op and input shapes")
    parser.add_argument("--by-caller", action="store_true", help="one row per op and calling op")
    add_host_args(parser)
    parser.set_defaults(device="cpu")  # CPU self time; a GPU's time goes to its kernels (gpu_check)
    args = parser.parse_args()
    device = setup(args)
    dtype = DTYPES[args.dtype]

    plain, inputs, targets = plain_model_and_batch(args, device)
    workload = Workload(plain.config, *inputs.shape, dtype, training=True)
    decisions = choose_kernels(KERNELS, workload, on_cpu=True)
    model = apply_cpu_kernels(plain, kept(decisions))
    step = our_step(model, kept(decisions), inputs, targets, args, device)
    for _ in range(args.warmup - 1):
        step()
    start, before = time.perf_counter(), page_faults()
    step()  # the last warm-up step, timed: the step as training runs it
    unprofiled_s, unprofiled_faults = time.perf_counter() - start, page_faults() - before
    self_us, calls, faults = profiled_self_times(step, args.steps, args.by_shape, args.by_caller)
    total = sum(self_us.values())
    matmul = sum(us for key, us in self_us.items() if key[0] in MATMULS)

    print(f"## Step profile: {args.preset}, {args.shape}, {args.dtype}, mean of {args.steps} steps\n")
    print(f"machine: {machine_line(device)}")
    print(f"{args.shape} {args.dtype}: {summary(decisions, workload)}")
    print(
        f"step: {unprofiled_s:.3f} s unprofiled ({unprofiled_faults:,} page faults; the last warm-up step), "
        f"{total / args.steps / 1e6:.3f} s under the profiler (the ops' self time; "
        f"{faults / args.steps:,.0f} page faults per step)"
    )
    print(f"matmuls ({', '.join(MATMULS)}): {100 * matmul / total:.1f}% of it\n")
    headers = ["op"] + ["input shapes"] * args.by_shape + ["called from"] * args.by_caller
    headers += ["ms/step", "% of step", "calls/step"]
    rows = [
        [*key, f"{us / args.steps / 1e3:,.1f}", f"{100 * us / total:.1f}%", f"{calls[key] / args.steps:g}"]
        for key, us in sorted(self_us.items(), key=lambda item: -item[1])[: args.rows]
    ]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
