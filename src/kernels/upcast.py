"""bf16 matmuls computed as fp32 matmuls of the same bf16 values; for CPUs without bf16 arithmetic.

On x86 CPUs without AVX512-BF16 or AMX (AVX2-only CPUs such as AMD Zen 2 and 3, Intel's
AVX-512 CPUs before Cooper Lake) PyTorch's bf16 matmul is emulated, many times slower than
its fp32 matmul (benchmarks/README.md), so a `bf16-mixed` run there is slower than fp32.
A product of two bf16 numbers is exact in fp32, and a bf16 matmul accumulates in fp32: so
widening the bf16-rounded operands to fp32 and multiplying them there computes the bf16
matmul, summed in another order. `UpcastLinear` does that for the linear layers (output
rounded to bf16, as autocast's; gradients left in fp32 until their tensor's dtype) and
`UpcastCausalAttention` for attention's batched matmuls. Elsewhere (fp32, CUDA, under
`torch.compile`) PyTorch's op runs, and so it does for products of fewer than
`UPCAST_MIN_ROWS` rows (one-token decoding): there a product reads each weight once, and
widening it to fp32 costs more than the bf16 product that reads half the bytes; a prompt's
prefill and batched decoding are upcast. Kept only where measured faster
(src/kernels/selection.py): on CPUs with bf16 instructions the bf16 matmul wins.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.kernels.attention import BlockwiseCausalAttention
from src.kernels.linear import LinearReplacement

UPCAST_MIN_ROWS = 16  # the fewest rows upcast: it won from 8 on Zen 2, 16 on Zen 3 (benchmarks/README.md)
UPCAST_WHOLE_BYTES = 8 * 2**20  # the largest fp32 weight widened whole (a layer's: 3.4 MiB for 135M)
UPCAST_SLICE_BYTES = 2 * 2**20  # the fp32 bytes of a larger weight widened at a time


def bf16_compute(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `x @ w.T` is a bf16 matmul on CPU, eagerly: under bf16 autocast, or on bf16
    tensors without autocast."""
    if x.device.type != "cpu" or w.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu") == torch.bfloat16 and {x.dtype, w.dtype} <= {
            torch.float32,
            torch.bfloat16,
        }
    return x.dtype == w.dtype == torch.bfloat16


def upcast_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The bf16 `x @ w.T` (rounded to bf16) computed in fp32, without autograd. A weight over
    `UPCAST_WHOLE_BYTES` in fp32 (an LM head: 113 MB for SmolLM2-135M) is widened a slice
    of its rows at a time, each slice multiplied while it is still in cache: widened whole,
    its fp32 copy goes out to memory and back, and that costs more than the emulated bf16
    product saves in decoding (benchmarks/README.md)."""
    xf = x.to(torch.bfloat16).float()
    if 4 * w.numel() <= UPCAST_WHOLE_BYTES:
        return F.linear(xf, w.to(torch.bfloat16).float()).to(torch.bfloat16)
    rows = max(1, UPCAST_SLICE_BYTES // (4 * w.shape[1]))
    y = x.new_empty((*x.shape[:-1], w.shape[0]), dtype=torch.bfloat16)
    for start in range(0, w.shape[0], rows):
        y[..., start : start + rows] = F.linear(xf, w[start : start + rows].to(torch.bfloat16).float())
    return y


class _UpcastLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        xb, wb = x.to(torch.bfloat16), w.to(torch.bfloat16)
        ctx.save_for_backward(xb, wb)  # what autocast saves: the bf16 copies
        ctx.dtypes = x.dtype, w.dtype
        return upcast_linear(xb, wb)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        xb, wb = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        grad_y = grad_y.float()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_y @ wb.float()).to(x_dtype)
        if ctx.needs_input_grad[1]:
            rows = grad_y.reshape(-1, grad_y.shape[-1])
            grad_w = (rows.t() @ xb.reshape(-1, xb.shape[-1]).float()).to(w_dtype)
        return grad_x, grad_w


class UpcastLinear(LinearReplacement):
    """`nn.Linear` whose bf16 CPU matmuls (forward, backward, inference) of at least
    `UPCAST_MIN_ROWS` rows run in fp32; bias-free only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.bias is not None
            or not bf16_compute(x, self.weight)  # first: False under torch.compile, no shape guard
            or x.numel() < UPCAST_MIN_ROWS * x.shape[-1]
        ):
            return super().forward(x)
        with torch.autocast("cpu", enabled=False):
            if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
                return _UpcastLinearFunction.apply(x, self.weight)
            return upcast_linear(x, self.weight)


class UpcastCausalAttention(BlockwiseCausalAttention):
    """`BlockwiseCausalAttention` computed in fp32 for bf16 inputs on CPU, its output bf16."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device.type != "cpu" or q.dtype != torch.bfloat16 or torch.compiler.is_compiling():
            return super().forward(q, k, v)
        return super().forward(q.float(), k.float(), v.float()).to(q.dtype)
