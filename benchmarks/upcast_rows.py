"""From how many rows a bf16 product computed in fp32 beats PyTorch's bf16 product.

`upcast_linear` (src/kernels/upcast.py) leaves products of fewer than `UPCAST_MIN_ROWS`
rows to PyTorch. This times both over every weight of the model, one product each (what
one decoding step of that many sequences multiplies, the head included), at each row
count, interleaved in one process. On a CPU with bf16 instructions PyTorch's product wins
at every count; on one without, the upcast wins once the product is compute bound.

    python -m benchmarks.upcast_rows --rows 1,2,4,8,16,32
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.common import (
    add_host_args,
    add_preset_arg,
    machine_line,
    markdown_table,
    non_negative_int,
    positive_int,
    positive_ints,
    setup,
    time_interleaved,
)
from src.errors import exit_on_user_error
from src.kernels.upcast import UPCAST_MIN_ROWS, upcast_linear
from src.models import SmolLM2, SmolLM2Config


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_preset_arg(parser, "smollm2_135m")
    parser.add_argument(
        "--rows", type=positive_ints, default="1,2,4,8,16,32", help="comma-separated row counts"
    )
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed passes of each")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed passes of each")
    add_host_args(parser)
    parser.set_defaults(device="cpu")
    args = parser.parse_args()
    device = setup(args)
    model = SmolLM2(SmolLM2Config.from_preset(args.preset)).to(torch.bfloat16)
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    print(f"## bf16 products of all {len(weights)} weights of {args.preset}: PyTorch's and upcast\n")
    print(f"machine: {machine_line(device)}")
    print(f"warm-up {args.warmup}, repeats {args.repeats} (interleaved); UPCAST_MIN_ROWS {UPCAST_MIN_ROWS}\n")
    table = []
    for rows in args.rows:
        inputs = {n: torch.randn(rows, n, dtype=torch.bfloat16) for n in {w.shape[1] for w in weights}}

        def products(multiply, inputs=inputs) -> None:
            for w in weights:
                multiply(inputs[w.shape[1]], w)

        with torch.inference_mode():
            timings = time_interleaved(
                {"bf16": lambda: products(F.linear), "upcast": lambda: products(upcast_linear)},
                device,
                args.warmup,
                args.repeats,
                alternate=True,
            )
        bf16, upcast = timings["bf16"], timings["upcast"]
        speedup = bf16.median / upcast.median
        table.append([rows, f"{1e3 * bf16.median:.1f}", f"{1e3 * upcast.median:.1f}", f"{speedup:.2f}x"])
    print(markdown_table(["rows", "bf16 ms", "upcast ms", "upcast speed-up"], table))


if __name__ == "__main__":
    main()
