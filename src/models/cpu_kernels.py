"""Faster CPU training kernels than PyTorch's defaults for three hot spots; CPU tensors only.

Profiling a SmolLM2-135M training step on CPU (benchmarks/README.md) showed:

- **Causal attention.** SDPA's CPU flash-attention kernel runs at a fraction of the
  machine's matmul rate (about 35% of a bf16 step). `causal_attention` computes it one
  block of queries at a time with batched matmuls and a fused softmax. The query heads
  that share a key/value head are folded into the rows of one matmul, so K and V are
  never repeated. Backward recomputes each block's probabilities, as flash attention
  does, so only q, k and v are kept: the memory is that of SDPA; for bf16 sequences up
  to 1024 tokens it keeps them instead, which is faster (`keeps_probabilities`). Scores
  are rounded to the input dtype before the fp32 softmax, as in transformers' eager
  attention.
- **fp32 matmuls.** PyTorch sends fp32 matmuls to MKL, which runs AVX2 code on AMD
  CPUs; oneDNN (PyTorch's own bf16 path) runs AVX-512 there, about 2x faster. `linear`
  computes `x @ w.T` through oneDNN for fp32 CPU tensors, in full fp32.
- **RMSNorm.** `F.rms_norm` is a composite of small ops on CPU, and autograd's backward
  through them saves and revisits each intermediate; `rms_norm` saves only its input and
  the per-row scale and has a hand-written backward (the 61 norms of a 135M bf16 step at
  2x1024: 0.06 s instead of 0.17 s, and -275 MiB).

`set_enabled(False)` (config: `cpu_kernels=false`) restores PyTorch's kernels everywhere.
Under `torch.compile` the attention is traced like any autograd.Function; the oneDNN
linear is not (Inductor cannot lower that op in a training graph), so there it is
F.linear, and RMSNorm is left to Inductor's fusion.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

_enabled = True


def set_enabled(enabled: bool) -> None:
    """Process-wide switch, like `torch.backends` flags."""
    global _enabled
    _enabled = enabled


@contextmanager
def disabled() -> Iterator[None]:
    """PyTorch's own kernels inside the block; the previous setting is restored after it."""
    previous = _enabled
    set_enabled(False)
    try:
        yield
    finally:
        set_enabled(previous)


def _active(*tensors: torch.Tensor) -> bool:
    return _enabled and all(t.device.type == "cpu" for t in tensors)


# ---------------------------------------------------------------------------- fp32 matmuls


def _use_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    return (
        _active(x, w)
        and not torch.compiler.is_compiling()  # Inductor cannot lower this op in training graphs
        and x.dtype == w.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """`x @ w.T` for x (..., in) and w (out, in), without autograd; oneDNN for fp32 on CPU."""
    if _use_onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return F.linear(x, w)


def weight_grad(grad_y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """`grad_y.T @ x` for grad_y (N, out) and x (N, in): a linear layer's weight gradient.

    On the oneDNN path it is computed transposed, `(x.T @ grad_y).T`, which takes the
    (N, out) operand as a plain weight: as `grad_y.T` it would be copied first, 200 MB for
    a 1024-token chunk of 49,152-wide logit gradients.
    """
    if _use_onednn(x, grad_y):
        return linear(x.t(), grad_y.t()).t()
    return grad_y.t() @ x


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return linear(x, w)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x, w = ctx.saved_tensors
        grad_x = linear(grad_y, w.t()) if ctx.needs_input_grad[0] else None  # (..., in)
        grad_w = None
        if ctx.needs_input_grad[1]:  # (out, in)
            grad_w = weight_grad(grad_y.reshape(-1, grad_y.shape[-1]), x.reshape(-1, x.shape[-1]))
        return grad_x, grad_w


class Linear(nn.Linear):
    """`nn.Linear` without bias whose fp32 CPU matmuls (forward and backward) run on oneDNN."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _use_onednn(x, self.weight) and torch.is_grad_enabled():
            return _OneDNNLinear.apply(x, self.weight)
        return linear(x, self.weight)


# ------------------------------------------------------------------------ causal attention

# Queries per block: the fastest of 32-512 in a 135M training step at T = 1024 on our dev
# CPU, 96 when backward recomputes the probabilities, 128 when it keeps them (-0.8%).
BLOCK_RECOMPUTED, BLOCK_KEPT = 96, 128
KEEP_PROBABILITIES_MAX_TOKENS = 1024  # see keeps_probabilities


def use_causal_attention(q: torch.Tensor) -> bool:
    """Whether `causal_attention` should replace SDPA for this (full-sequence, causal) call."""
    return _active(q)


def _probabilities(q_rows: torch.Tensor, k_t: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
    """Softmax of q_rows (BK, n*G, D) against the first keys k_t (BK, D, S), causal."""
    scores = torch.bmm(q_rows, k_t)  # (BK, n*G, S)
    scores[:, :, start:] += mask[: q_rows.shape[1], : k_t.shape[2] - start]  # the diagonal block
    return torch.softmax(scores, dim=-1)


def _causal_mask(block: int, group: int, like: torch.Tensor) -> torch.Tensor:
    """(block*G, block): -inf where a key of the diagonal block lies after the row's query, else 0.

    Rows are ordered (query, head in group), so row r is query r // G of the block.
    """
    query = torch.arange(block * group, device=like.device) // group
    after = torch.arange(block, device=like.device)[None, :] > query[:, None]
    return torch.zeros(after.shape, dtype=like.dtype, device=like.device).masked_fill_(after, float("-inf"))


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, keep: bool
    ) -> torch.Tensor:
        B, T, H, D = q.shape
        K, G = k.shape[2], H // k.shape[2]
        kept = []  # each block's probabilities, if backward is to reuse them
        with torch.autocast("cpu", enabled=False):
            qr, kr, vr = _row_layouts(q, k, v)
            kr_t = kr.transpose(1, 2).contiguous()  # (BK, D, T): its slices need no copy in bmm
            mask = _causal_mask(block, G, q)
            out = torch.empty_like(qr)  # (BK, T*G, D)
            for start in range(0, T, block):
                end = min(start + block, T)
                rows = slice(start * G, end * G)
                probs = _probabilities(qr[:, rows], kr_t[:, :, :end], mask, start)  # (BK, n*G, end)
                out[:, rows] = torch.bmm(probs, vr[:, :end])
                if keep:
                    kept.append(probs)
        # The row layouts replace q, k and v (same memory): backward does not redo them.
        ctx.save_for_backward(qr, kr, vr, *kept)
        ctx.block, ctx.shape = block, (B, T, H, D)
        return out.view(B, K, T, G, D).permute(0, 2, 1, 3, 4).reshape(B, T, H, D)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        qr, kr, vr, *kept = ctx.saved_tensors
        block, (B, T, H, D) = ctx.block, ctx.shape
        K = kr.shape[0] // B
        G = H // K
        with torch.autocast("cpu", enabled=False):
            if not kept:
                kr_t, mask = kr.transpose(1, 2).contiguous(), _causal_mask(block, G, qr)
            vr_t = vr.transpose(1, 2).contiguous()  # (BK, D, T)
            grad_rows = grad_out.reshape(B, T, K, G, D).transpose(1, 2).reshape(B * K, T * G, D)
            grad_q = torch.empty_like(qr)  # (BK, T*G, D)
            grad_k = torch.zeros(kr.shape, dtype=torch.float32, device=kr.device)  # summed over blocks
            grad_v = torch.zeros(vr.shape, dtype=torch.float32, device=vr.device)
            for i, start in enumerate(range(0, T, block)):
                end = min(start + block, T)
                rows = slice(start * G, end * G)
                q_rows, grad_o = qr[:, rows], grad_rows[:, rows]  # (BK, n*G, D)
                probs = kept[i] if kept else _probabilities(q_rows, kr_t[:, :, :end], mask, start)
                grad_v[:, :end] += torch.bmm(probs.transpose(1, 2), grad_o)
                grad_probs = torch.bmm(grad_o, vr_t[:, :, :end])
                grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
                grad_q[:, rows] = torch.bmm(grad_scores, kr[:, :end])
                grad_k[:, :end] += torch.bmm(grad_scores.transpose(1, 2), q_rows)
        scale = D**-0.5
        grad_q = grad_q.mul_(scale).view(B, K, T, G, D).permute(0, 2, 1, 3, 4).reshape(B, T, H, D)
        grad_k = grad_k.view(B, K, T, D).transpose(1, 2).to(kr.dtype)
        grad_v = grad_v.view(B, K, T, D).transpose(1, 2).to(vr.dtype)
        return grad_q, grad_k, grad_v, None, None


def _row_layouts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(B, T, H, D) queries, scaled by 1/sqrt(D) -> (B*K, T*G, D) rows ordered (query, head
    in group); (B, T, K, D) keys and values -> (B*K, T, D)."""
    B, T, H, D = q.shape
    K = k.shape[2]
    q_rows = (q * D**-0.5).view(B, T, K, H // K, D).transpose(1, 2)  # (B, K, T, G, D)
    return (
        q_rows.reshape(B * K, T * (H // K), D),
        k.transpose(1, 2).reshape(B * K, T, D),
        v.transpose(1, 2).reshape(B * K, T, D),
    )


def keeps_probabilities(q: torch.Tensor) -> bool:
    """Whether backward reuses the forward's attention probabilities for these queries.

    Reusing them saves a QK^T matmul and a softmax per block (the flash-style recompute);
    keeping them costs H·T²/2 values per sequence and layer, which grows with T² while the
    other activations grow with T. Kept for 16-bit inputs up to 1024 tokens: in a
    SmolLM2-135M bf16 step at 2x1024 that is 4% faster for +590 MiB, and the step stays
    below transformers' memory (benchmarks/README.md). fp32 (twice the bytes) and longer
    sequences recompute.
    """
    return q.element_size() == 2 and q.shape[1] <= KEEP_PROBABILITIES_MAX_TOKENS


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int | None = None, keep: bool | None = None
) -> torch.Tensor:
    """Causal grouped-query attention: q (B, T, H, D), k and v (B, T, K, D) -> (B, T, H, D).

    Equals `F.scaled_dot_product_attention(..., is_causal=True, enable_gqa=True)` on the
    (B, heads, T, D) transposes, with scale 1/sqrt(D). `keep`: whether backward reuses
    the probabilities instead of recomputing them; by default `keeps_probabilities(q)`.
    """
    if keep is None:
        keep = keeps_probabilities(q)
    keep = keep and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    if block is None:
        block = BLOCK_KEPT if keep else BLOCK_RECOMPUTED
    return _CausalAttention.apply(q, k, v, block, keep)


# -------------------------------------------------------------------------------- RMSNorm


class _RMSNorm(torch.autograd.Function):
    """RMSNorm of fp32 rows, output written in `dtype`; saves x and 1/rms(x), nothing else."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = mean_square.add_(eps).rsqrt_()  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return torch.mul(x * rstd, weight, out=torch.empty(x.shape, dtype=dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, weight, rstd = ctx.saved_tensors
        x_hat = x * rstd
        grad_weight = (grad_y * x_hat).flatten(0, -2).sum(0)
        grad_x_hat = grad_y * weight  # fp32
        # x_hat = x * rstd(x)  =>  grad_x = rstd * (grad_x_hat - x_hat * mean(grad_x_hat * x_hat))
        dot = (grad_x_hat * x_hat).mean(-1, keepdim=True)
        return grad_x_hat.sub_(x_hat.mul_(dot)).mul_(rstd), grad_weight, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """`F.rms_norm(x, weight)` of fp32 x, cast to `dtype`; a hand-written backward on CPU."""
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if wants_grad and _active(x, weight) and not torch.compiler.is_compiling():  # Inductor fuses
        return _RMSNorm.apply(x, weight, eps, dtype)
    return F.rms_norm(x, x.shape[-1:], weight, eps).to(dtype)
