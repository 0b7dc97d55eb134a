"""Where one CPU training step of ours spends its time: torch.profiler's self time per op.

The step is the one `benchmarks.train_step` times (forward + loss + backward + AdamW), with
the kernels training keeps for this shape and dtype. Self time excludes the ops an op
calls, so the rows add up to the step; the profiler itself adds a few percent.
`--by-shape` splits each op by its input shapes, `--by-caller` by the op or autograd
node that called it (which cast, which backward).

    python -m benchmarks.step_profile                       # smollm2_135m, 2x1024, bf16
    python -m benchmarks.step_profile --dtype fp32 --by-caller --rows 40
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import DTYPES, add_host_args, machine_line, markdown_table, setup
from benchmarks.train_step import adamw, loss_fns, make_step
from src.kernels import KERNELS, apply_cpu_kernels, loss_matmuls
from src.kernels.probes import Workload
from src.kernels.selection import choose_kernels, kept, summary
from src.models import SmolLM2, SmolLM2Config

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="smollm2_135m")
    parser.add_argument("--shape", default="2x1024", help="BATCHxSEQ")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--chunk-size", type=int, default=1024, help="tokens per loss chunk")
    parser.add_argument("--warmup", type=int, default=2, help="unprofiled steps first")
    parser.add_argument("--steps", type=int, default=2, help="profiled steps, averaged")
    parser.add_argument("--rows", type=int, default=25, help="ops listed, by self time")
    parser.add_argument("--by-shape", action="store_true", help="one row per op and input shapes")
    parser.add_argument("--by-caller", action="store_true", help="one row per op and calling op")
    add_host_args(parser)
    parser.set_defaults(device="cpu")  # CPU self time; a GPU's time goes to its kernels (gpu_check)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error(f"--steps must be at least 1, got {args.steps}")
    device = setup(args)
    dtype = DTYPES[args.dtype]

    torch.manual_seed(0)
    plain = SmolLM2(SmolLM2Config.from_preset(args.preset)).to(device).train()
    B, T = (int(n) for n in args.shape.split("x"))
    workload = Workload(plain.config, B, T, dtype, training=True)
    decisions = choose_kernels(KERNELS, workload, on_cpu=True)
    model = apply_cpu_kernels(copy.deepcopy(plain), kept(decisions))
    x = torch.randint(0, plain.config.vocab_size, (B, T + 1), device=device)
    inputs, targets = x[:, :T], x[:, 1:]
    loss = loss_fns({"ours": model}, inputs, targets, args.chunk_size, loss_matmuls(kept(decisions)))
    step = make_step(loss["ours"], adamw(model), device, dtype)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
        for _ in range(args.steps):
            step()

    self_us: dict[tuple[str, ...], float] = defaultdict(float)
    calls: dict[tuple[str, ...], int] = defaultdict(int)
    for event in prof.events():
        key = _key(event, args.by_shape, args.by_caller)
        self_us[key] += event.self_cpu_time_total
        calls[key] += 1
    total = sum(self_us.values())
    matmul = sum(us for key, us in self_us.items() if key[0] in MATMULS)

    print(f"## Step profile: {args.preset}, {args.shape}, {args.dtype}, mean of {args.steps} steps\n")
    print(f"machine: {machine_line(device)}")
    print(f"{args.shape} {args.dtype}: {summary(decisions, workload)}")
    print(f"step under the profiler: {total / args.steps / 1e6:.3f} s (the ops' self time)")
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
