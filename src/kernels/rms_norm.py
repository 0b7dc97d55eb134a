"""RMSNorm with a hand-written backward, its output cast once for the matmuls that read it.

`F.rms_norm` is a composite of small ops on CPU, and autograd's backward through them
saves and revisits each intermediate; `rms_norm` saves only its input and the per-row
scale, applies the weight in the same pass, and goes back through LayerNorm's fused CPU
backward (RMSNorm is LayerNorm with mean 0 and no centring). `FusedRMSNorm` also writes
its output in the autocast dtype: it only feeds matmuls, which would each cast it (q, k, v
or gate, up), so one cast and one saved copy replace three, with the same values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.models.smollm2 import RMSNorm


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm of fp32 rows, output written in `dtype`; saves x and 1/rms(x), nothing else."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
        mean_square = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = mean_square.add_(eps).rsqrt_()  # (..., 1)
        ctx.save_for_backward(x, weight, rstd)
        return torch.mul(x * rstd, weight, out=torch.empty(x.shape, dtype=dtype, device=x.device))

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, weight, rstd = ctx.saved_tensors
        grad_y = grad_y.to(x.dtype)
        wants_x, wants_weight = ctx.needs_input_grad[:2]
        # LayerNorm's fused backward given mean 0 is RMSNorm's (x_hat = x * rstd), but for
        # LayerNorm's centring term, -rstd * mean(grad_y * weight) per row, added back here.
        mean = torch.zeros_like(rstd)
        grad_x, grad_weight, _ = torch.ops.aten.native_layer_norm_backward(
            grad_y, x, x.shape[-1:], mean, rstd, weight, None, [wants_x, wants_weight, False]
        )
        if wants_x:
            centring = torch.mv(grad_y.reshape(-1, x.shape[-1]), weight).view(rstd.shape)
            grad_x.add_(centring.mul_(rstd / x.shape[-1]))
        return grad_x, grad_weight, None, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """`F.rms_norm(x, weight)` of fp32 x, cast to `dtype`; a hand-written backward on CPU, only
    when gradients are wanted (inference gains nothing from it).
    """
    wants_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if wants_grad and x.device.type == weight.device.type == "cpu":
        return _RMSNormFunction.apply(x, weight, eps, dtype)
    return F.rms_norm(x, x.shape[-1:], weight, eps).to(dtype)


class FusedRMSNorm(RMSNorm):
    """The model's RMSNorm through `rms_norm` for fp32 inputs, its output in the autocast dtype."""

    @classmethod
    def from_norm(cls, norm: RMSNorm) -> FusedRMSNorm:
        """The same norm, sharing `norm`'s weight."""
        with torch.device("meta"):
            new = cls(norm.weight.shape[0], norm.eps)
        new.weight = norm.weight
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # the plain norm, which Inductor fuses itself: a compiled
            return super().forward(x)  # run computes the same with this kernel named or not
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        if x.dtype == torch.float32:
            return rms_norm(x, self.weight, self.eps, dtype)
        return super().forward(x).to(dtype)
