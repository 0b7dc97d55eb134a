"""Next-token cross-entropy computed from the trunk's hidden states and the LM head weight.

The plain way, `F.cross_entropy(F.linear(hidden, W).float(), targets)`, keeps the whole
(N, V) logits tensor in fp32 plus its softmax and gradient: with V = 49152 that is about
0.6 GB per 1024 tokens, more than SmolLM2-135M's activations. Here the tokens are cut into
chunks and, when gradients are wanted, each chunk's gradients are computed right away in
the forward pass: the loss ends the graph, so backward only has to scale the stored (N, C)
and (V, C) gradients by the incoming scalar. No logits are kept and no matmul is redone.
With `onednn=True` the fp32 CPU matmuls go through oneDNN (src/kernels/linear.py), the
weight gradient's too unless `onednn_weight_grad=False`; with `upcast=True` bf16 CPU matmuls
run in fp32 on the bf16-rounded operands (src/kernels/upcast.py).
"""

from __future__ import annotations

import torch

from src.kernels.linear import linear, uses_onednn, weight_grad

IGNORE_INDEX = -100  # a target left out of the mean, as F.cross_entropy's default
ROWS_PER_SOFTMAX_PASS_CPU = 8  # (8, 49152) fp32 log-probs = 1.5 MB: each pass stays in L2


def _target_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, grad_scale: torch.Tensor | None
) -> torch.Tensor:
    """fp32 log-softmax of (n, V) logits at (n, 1) targets; with grad_scale (n, 1), the logits
    are overwritten by the loss gradient `(softmax - one_hot) * grad_scale`.

    On CPU, eagerly, this goes a few rows at a time: the fp32 log-probs, softmax and
    gradient of those rows stay in cache instead of making four 200 MB passes over memory
    per 1024 tokens, and no fp32 (n, V) tensor is allocated. Elsewhere one pass: kernel
    launches (CUDA) or graph size (torch.compile, which fuses these ops itself) cost more
    there than memory traffic.
    """
    eager_cpu = logits.device.type == "cpu" and not torch.compiler.is_compiling()
    step = ROWS_PER_SOFTMAX_PASS_CPU if eager_cpu else logits.shape[0]
    picked = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)  # (n, 1)
    for start in range(0, logits.shape[0], step):
        rows = slice(start, start + step)
        if grad_scale is not None and eager_cpu:
            grad = torch.softmax(logits[rows], dim=-1, dtype=torch.float32)
            picked[rows] = _log_of_picked(grad, logits[rows], targets[rows])
        else:
            logp = torch.log_softmax(logits[rows], dim=-1, dtype=torch.float32)
            picked[rows] = logp.gather(1, targets[rows])
            grad = logp.exp_() if grad_scale is not None else None  # the softmax, in place
        if grad is not None:
            grad.scatter_add_(1, targets[rows], torch.full_like(targets[rows], -1, dtype=grad.dtype))
            torch.mul(grad, grad_scale[rows], out=logits[rows])
    return picked.squeeze(1)


def _log_of_picked(probs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The log-softmax at (n, 1) targets, from the softmax `probs` of `logits`: one exp per
    logit (the softmax's), where the log-softmax and then its exp take two.

    Not log(probs[target]), which is -inf once that probability falls below fp32's range:
    log p_t = x_t - max(x) - log(sum exp(x - max x)), and the sum is 1 / (the largest
    probability), which is at least 1/V. No branch, so no host read.
    """
    top = logits.amax(dim=-1, keepdim=True).float()  # (n, 1)
    return logits.gather(1, targets).float().sub_(top).add_(probs.amax(dim=-1, keepdim=True).log_())


def _chunked_loss(
    x: torch.Tensor,
    w: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    ignore_index: int,
    onednn: bool,
    onednn_weight_grad: bool = True,
    grad_x: torch.Tensor | None = None,
    want_grad_w: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Mean loss of x (N, C) @ w.T (V, C) against targets (N,), and with `want_grad_w` its
    fp32 gradient for w; fills grad_x if given.

    Matmuls run in x's dtype, softmax and loss in fp32, as under autocast. The first chunk's
    weight gradient becomes grad_w (in fp32 the matmul's own output: no pass to zero or copy
    a (V, C) tensor), the others are added to it: in fp32 through PyTorch's matmul, inside
    it (`addmm_`), without a (V, C) temporary.
    """
    count = (targets != ignore_index).sum().clamp(min=1)
    want_grad = grad_x is not None or want_grad_w
    onednn_grad = onednn and onednn_weight_grad and uses_onednn(x, w)  # the weight gradient's matmul
    add_in_matmul = x.dtype == torch.float32 and not onednn_grad  # fp32 through PyTorch's matmul
    grad_w = None
    loss = torch.zeros((), device=x.device, dtype=torch.float32)
    for start in range(0, x.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        xc, tc = x[rows], targets[rows]  # (n, C), (n,)
        valid = tc != ignore_index
        safe = tc.masked_fill(~valid, 0)[:, None]  # (n, 1)
        # d(mean loss)/d(logits) = (softmax - one_hot) / count, zero on ignored rows.
        grad_scale = (valid / count)[:, None] if want_grad else None
        logits = linear(xc, w, onednn)  # (n, V), becomes its own gradient
        loss -= (_target_log_probs(logits, safe, grad_scale) * valid).sum()
        if grad_x is not None:
            grad_x[rows] = linear(logits, w.t(), onednn)  # grad @ w
        if want_grad_w:
            if grad_w is None:
                grad_w = weight_grad(logits, xc, onednn_grad).to(torch.float32).contiguous()
            elif add_in_matmul:
                grad_w.addmm_(logits.t(), xc)  # += grad.T @ xc
            else:
                grad_w += weight_grad(logits, xc, onednn_grad)
    if want_grad_w and grad_w is None:  # no tokens
        grad_w = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    return loss / count, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss with its gradients computed in forward; backward just scales them."""

    @staticmethod
    def forward(
        ctx, hidden, weight, targets, chunk_size, ignore_index, dtype, onednn, onednn_weight_grad, widen
    ):
        x, w = _matmul_operands(hidden, weight, dtype, widen)
        grad_x = torch.empty_like(x) if ctx.needs_input_grad[0] else None  # (N, C)
        want_grad_w = ctx.needs_input_grad[1]
        loss, grad_w = _chunked_loss(
            x, w, targets, chunk_size, ignore_index, onednn, onednn_weight_grad, grad_x, want_grad_w
        )
        ctx.save_for_backward(grad_x, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_x, grad_w = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = None if grad_x is None else (grad_x * grad_loss).to(hidden_dtype)
        grad_weight = None if grad_w is None else (grad_w * grad_loss).to(weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def _matmul_operands(
    hidden: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype, widen: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden and weight rounded to `dtype`, then widened to fp32 if `widen`: the bf16
    matmul's products exactly, at the fp32 matmul's speed (src/kernels/upcast.py). The
    logits stay fp32, which the loss computes in anyway."""
    x, w = hidden.to(dtype), weight.to(dtype)
    return (x.float(), w.float()) if widen else (x, w)


def lm_cross_entropy(
    hidden: torch.Tensor,
    head_weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
    onednn: bool = False,
    onednn_weight_grad: bool = True,
    upcast: bool = False,
) -> torch.Tensor:
    """Mean cross-entropy of (B, T, C) hidden states against (B, T) target ids, in fp32.

    Equals `F.cross_entropy(F.linear(hidden, head_weight).float(), targets)` in value and
    gradients (under autocast too: the head matmul runs in the autocast dtype) while only
    `chunk_size` tokens' logits exist at a time. `onednn`: fp32 CPU matmuls through oneDNN,
    the weight gradient's only with `onednn_weight_grad` (`loss_matmuls` in
    src/kernels/converter.py sets both as the linear layers' kernel does). `upcast`: bf16
    CPU matmuls in fp32, as `UpcastLinear`'s (eager only).
    """
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    widen = upcast and dtype == torch.bfloat16 and device == "cpu" and not torch.compiler.is_compiling()
    x, t = hidden.flatten(0, -2), targets.flatten()  # (N, C), (N,)
    with torch.autocast(device, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or head_weight.requires_grad):
            return _LinearCrossEntropy.apply(
                x, head_weight, t, chunk_size, ignore_index, dtype, onednn, onednn_weight_grad, widen
            )
        return _chunked_loss(
            *_matmul_operands(x, head_weight, dtype, widen), t, chunk_size, ignore_index, onednn
        )[0]
