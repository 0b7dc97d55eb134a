"""Causal grouped-query attention computed one block of queries at a time; for CPU tensors.

SDPA's CPU flash-attention kernel runs at a fraction of the machine's matmul rate.
`causal_attention` computes the same function with batched matmuls and a fused softmax,
one block of queries at a time. The query heads that share a key/value head are folded
into the rows of one matmul, so K and V are never repeated. Backward recomputes each
block's probabilities, as flash attention does, so only q, k and v are kept and the
memory is that of SDPA; for short 16-bit sequences it keeps them instead, which is faster
(`keeps_probabilities`). Scores are rounded to the input dtype before the fp32 softmax,
as in transformers' eager attention. Under `torch.compile` the autograd.Function is
traced like any other.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from src.models.smollm2 import ScaledDotProductAttention

# Queries per block: the fastest sizes measured in a 135M training step (benchmarks/README.md),
# one for each backward policy.
BLOCK_RECOMPUTED, BLOCK_KEPT = 96, 128
KEEP_PROBABILITIES_MAX_TOKENS = 1024  # see keeps_probabilities


def _probabilities(
    q_rows: torch.Tensor, k_t: torch.Tensor, mask: torch.Tensor, start: int, scratch: torch.Tensor
) -> torch.Tensor:
    """Softmax of q_rows (BK, n*G, D) against the first keys k_t (BK, D, S), causal; the
    scores are written into `scratch` (`_scratch`)."""
    scores = _bmm(scratch, q_rows, k_t)  # (BK, n*G, S)
    scores[:, :, start:] += mask[: q_rows.shape[1], : k_t.shape[2] - start]  # the diagonal block
    return torch.softmax(scores, dim=-1)


def _causal_mask(block: int, group: int, like: torch.Tensor) -> torch.Tensor:
    """(block*G, block): -inf where a key of the diagonal block lies after the row's query, else 0.

    Rows are ordered (query, head in group), so row r is query r // G of the block.
    """
    query = torch.arange(block * group, device=like.device) // group
    after = torch.arange(block, device=like.device)[None, :] > query[:, None]
    return torch.zeros(after.shape, dtype=like.dtype, device=like.device).masked_fill_(after, float("-inf"))


def _copy_blocked(positions: torch.Tensor, blocks: torch.Tensor, into_blocks: bool) -> None:
    """Copy between positions (B, T, K, G, D) and a block buffer seen as (B, n, block, K, G, D)
    (`_blocked`), in the direction `into_blocks` says; one pass."""
    T, block = positions.shape[1], blocks.shape[2]
    full = T // block * block
    pairs = [(positions[:, :full].unflatten(1, (T // block, block)), blocks[:, : T // block])]
    if full < T:  # a short last block: its first T - full rows
        pairs.append((positions[:, full:], blocks[:, T // block, : T - full]))
    for src, dst in pairs:
        if not into_blocks:
            src, dst = dst, src
        dst.copy_(src)


def _write(dst: torch.Tensor, op: Callable[..., torch.Tensor], *args: object) -> None:
    """`op(*args)` written into `dst`: through `out=` eagerly (no temporary); as a copy under
    torch.compile, whose Dynamo takes no `out=` view and whose Inductor elides the copy."""
    if torch.compiler.is_compiling():
        dst.copy_(op(*args))
    else:
        op(*args, out=dst)


def _scratch(qb: torch.Tensor, keys: int) -> torch.Tensor:
    """A flat buffer for one block's scores, or their gradient, against up to `keys` keys,
    for queries in blocks qb (n, BK, rows, D). Every block reuses it: a tensor written and
    read again while it is still in cache, where a new one per block went out to memory."""
    return torch.empty(qb.shape[1] * qb.shape[2] * keys, dtype=qb.dtype, device=qb.device)


def _bmm(scratch: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`torch.bmm(a, b)` written into the start of the flat `scratch`, seen as a contiguous
    tensor; a new tensor under torch.compile, whose Dynamo takes no `out=` view."""
    if torch.compiler.is_compiling():
        return torch.bmm(a, b)
    shape = (a.shape[0], a.shape[1], b.shape[2])
    return torch.bmm(a, b, out=scratch[: shape[0] * shape[1] * shape[2]].view(shape))


def _blocked(blocks: torch.Tensor, batch: int, block: int) -> torch.Tensor:
    """A (n, B*K, block*G, D) buffer seen as (B, n, block, K, G, D), the order of (B, T, H, D)."""
    n, BK, rows, D = blocks.shape
    return blocks.view(n, batch, BK // batch, block, rows // block, D).permute(1, 0, 3, 2, 4, 5)


def _to_blocks(x: torch.Tensor, block: int, group: int) -> torch.Tensor:
    """(B, T, H, D) -> (n, B*K, block*G, D): block i holds positions
    i*block.. in rows ordered (position, head in group), so that every block's (B*K, rows, D)
    is contiguous, as `torch.bmm` wants its operands (it copies any other layout). A short last
    block fills only its first rows."""
    B, T, H, D = x.shape
    n = -(-T // block)
    blocks = torch.empty((n, B * (H // group), block * group, D), dtype=x.dtype, device=x.device)
    positions = x.view(B, T, H // group, group, D)
    _copy_blocked(positions, _blocked(blocks, B, block), into_blocks=True)
    return blocks


def _from_blocks(blocks: torch.Tensor, shape: torch.Size, block: int) -> torch.Tensor:
    """The inverse of `_to_blocks`: (n, B*K, block*G, D) -> (B, T, H, D) of `shape`."""
    B, T, H, D = shape
    K = blocks.shape[1] // B
    x = torch.empty(shape, dtype=blocks.dtype, device=blocks.device)
    positions = x.view(B, T, K, H // K, D)
    _copy_blocked(positions, _blocked(blocks, B, block), into_blocks=False)
    return x


def _key_layout(k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """(B, T, K, D) keys or values -> (B*K, T, D), times `scale` if given; one pass."""
    B, T, K, D = k.shape
    out = torch.empty((B, K, T, D), dtype=k.dtype, device=k.device)
    if scale is None:
        out.copy_(k.transpose(1, 2))
    else:
        _write(out, torch.mul, k.transpose(1, 2), scale)
    return out.view(B * K, T, D)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block: int, keep: bool
    ) -> torch.Tensor:
        B, T, H, D = q.shape
        G = H // k.shape[2]
        kept = []  # each block's probabilities, if backward is to reuse them
        with torch.autocast("cpu", enabled=False):
            qb = _to_blocks(q, block, G)  # (n, BK, block*G, D)
            # The 1/sqrt(D) scale goes on the keys, a third of the queries' size here (GQA).
            kr, vr = _key_layout(k, D**-0.5), _key_layout(v)  # (BK, T, D)
            kr_t = kr.transpose(1, 2).contiguous()  # (BK, D, T)
            mask = _causal_mask(block, G, q)
            out = torch.empty_like(qb)
            scores = _scratch(qb, T)
            for i, start in enumerate(range(0, T, block)):
                end = min(start + block, T)
                rows = slice(0, (end - start) * G)
                probs = _probabilities(qb[i, :, rows], kr_t[:, :, :end], mask, start, scores)  # (BK, nG, end)
                _write(out[i, :, rows], torch.bmm, probs, vr[:, :end])
                if keep:
                    kept.append(probs)
        # The block layouts replace q, k and v (same memory): backward does not redo them.
        # With the keys scaled, so is the queries' gradient dS @ K, but not the keys' dS^T @ Q.
        ctx.save_for_backward(qb, kr, vr, *kept)
        ctx.block, ctx.shape = block, q.shape
        return _from_blocks(out, q.shape, block)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, None, None]:
        qb, kr, vr, *kept = ctx.saved_tensors
        block, (B, T, H, D) = ctx.block, ctx.shape
        K = kr.shape[0] // B
        G = H // K
        with torch.autocast("cpu", enabled=False):
            if not kept:
                kr_t, mask = kr.transpose(1, 2).contiguous(), _causal_mask(block, G, qb)
            vr_t = vr.transpose(1, 2).contiguous()  # (BK, D, T)
            grad_ob = _to_blocks(grad_out, block, G)  # (n, BK, block*G, D)
            grad_qb = torch.empty_like(qb)
            grad_k = torch.zeros(kr.shape, dtype=torch.float32, device=kr.device)  # summed over blocks
            grad_v = torch.zeros(vr.shape, dtype=torch.float32, device=vr.device)
            scratch = _scratch(qb, T)  # scores, then their gradient
            for i, start in enumerate(range(0, T, block)):
                end = min(start + block, T)
                rows = slice(0, (end - start) * G)
                q_rows, grad_o = qb[i, :, rows], grad_ob[i, :, rows]  # (BK, n*G, D)
                probs = kept[i] if kept else _probabilities(q_rows, kr_t[:, :, :end], mask, start, scratch)
                grad_v[:, :end] += torch.bmm(probs.transpose(1, 2), grad_o)
                grad_probs = _bmm(scratch, grad_o, vr_t[:, :, :end])
                grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
                _write(grad_qb[i, :, rows], torch.bmm, grad_scores, kr[:, :end])
                grad_k[:, :end] += torch.bmm(grad_scores.transpose(1, 2), q_rows)
        grad_q = _from_blocks(grad_qb, ctx.shape, block)
        grad_k = grad_k.mul_(D**-0.5).view(B, K, T, D).transpose(1, 2).to(kr.dtype)
        grad_v = grad_v.view(B, K, T, D).transpose(1, 2).to(vr.dtype)
        return grad_q, grad_k, grad_v, None, None


def keeps_probabilities(q: torch.Tensor) -> bool:
    """Whether backward reuses the forward's attention probabilities for these queries.

    Reusing them saves a QK^T matmul and a softmax per block (the flash-style recompute);
    keeping them costs H·T²/2 values per sequence and layer, which grows with T² while the
    other activations grow with T. Kept for 16-bit inputs up to 1024 tokens, where a
    SmolLM2-135M step was measured faster and stayed below transformers' memory
    (benchmarks/README.md). fp32 (twice the bytes) and longer sequences recompute.
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


class BlockwiseCausalAttention(ScaledDotProductAttention):
    """The model's attention function computed by `causal_attention` on CPU; SDPA elsewhere."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.device.type != "cpu":
            return super().forward(q, k, v)
        y = causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # (B, T, H, D)
        return y.transpose(1, 2)  # (B, H, T, D)
