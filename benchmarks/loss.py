"""The LM loss, chunked against one pass, eager and compiled: `python -m benchmarks.loss`

Training computes the loss with `src.kernels.loss.lm_cross_entropy`: chunks of 1024 tokens,
each chunk's gradients computed in forward, so no (N, V) logits are ever kept. Compiled on
CUDA, one pass over all N tokens (`F.cross_entropy(F.linear(h, W).float(), t)`, whose
softmax, gather and cast inductor fuses) may be faster at the cost of memory. This times
forward + backward of the loss alone, from the trunk's hidden states (fp32, as they leave
the final norm) to the gradients of the hidden states and the head, under autocast for
bf16, and the peak memory of one call; all rows in the same process, against one pass.
Keep the chunked loss unless another row is faster at no more memory.

    python -m benchmarks.loss --device cuda --dtypes bf16 --compile      # 8 x 2048 tokens
    python -m benchmarks.loss --tokens 2048 --dtypes fp32                # a CPU-sized run
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.common import (
    DTYPES,
    add_common_args,
    add_compile_args,
    add_preset_arg,
    compile_note,
    machine_line,
    markdown_table,
    peak_memory_bytes,
    positive_int,
    setup,
    time_interleaved,
)
from src.errors import exit_on_user_error
from src.kernels.loss import lm_cross_entropy
from src.models import SmolLM2Config


def one_pass(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The plain loss: all N x V logits at once."""
    return F.cross_entropy(F.linear(hidden, weight).float(), targets)


def one_chunk(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Ours with a single chunk: gradients in forward, one pass over all N tokens."""
    return lm_cross_entropy(hidden, weight, targets, chunk_size=hidden.shape[0])


def step(
    fn: Callable[..., torch.Tensor],
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Loss and gradients of hidden and weight, the matmul in `dtype` (autocast) as training does."""
    hidden.grad = weight.grad = None
    with torch.autocast(hidden.device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss = fn(hidden, weight, targets)
    loss.backward()
    return loss.detach()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "chunked (ours)": lm_cross_entropy,
    "ours, one chunk": one_chunk,
    "one pass": one_pass,
}


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_preset_arg(parser, "smollm2_135m")  # whose width and vocabulary
    parser.add_argument(
        "--tokens", type=positive_int, default=8 * 2048, help="tokens per call (batch x sequence)"
    )
    add_compile_args(parser, rows="each loss")
    add_common_args(parser, repeats=5)
    args = parser.parse_args()
    device = setup(args)

    config = SmolLM2Config.from_preset(args.preset)
    torch.manual_seed(0)
    hidden = torch.randn(args.tokens, config.hidden_size, device=device, requires_grad=True)  # (N, C)
    weight = (torch.randn(config.vocab_size, config.hidden_size, device=device) * 0.02).requires_grad_()
    targets = torch.randint(0, config.vocab_size, (args.tokens,), device=device)  # (N,)
    losses = dict(LOSSES)
    if args.compile:
        compiled = {
            f"{name}, compiled": torch.compile(fn, backend=args.compile_backend)
            for name, fn in LOSSES.items()
        }
        losses.update(compiled)

    print(f"## LM loss, forward + backward: {args.preset} head ({config.vocab_size} x {config.hidden_size})")
    print(f"{args.tokens} tokens per call\n\nmachine: {machine_line(device)}")
    print(f"warm-up {args.warmup}, repeats {args.repeats} (interleaved){compile_note(args)}\n")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        tensors = hidden, weight, targets, dtype
        calls = {name: functools.partial(step, fn, *tensors) for name, fn in losses.items()}
        values = {name: float(call()) for name, call in calls.items()}  # also the compile warm-up
        timings = time_interleaved(calls, device, args.warmup, args.repeats)
        reference = timings["one pass"].median
        for name, timing in timings.items():
            peak_mib = peak_memory_bytes(calls[name], device) / 2**20
            rows.append(
                [
                    dtype_name,
                    name,
                    timing.cell(),
                    f"{args.tokens / timing.median:,.0f}",
                    f"{peak_mib:,.0f}",
                    f"{values[name]:.4f}",
                    f"{reference / timing.median:.2f}x",
                ]
            )
    headers = ["dtype", "loss", "s/call", "tokens/s", "peak MiB", "loss value", "vs one pass"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
