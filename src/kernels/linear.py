"""fp32 CPU matmuls through oneDNN instead of MKL; CPU tensors only.

PyTorch sends fp32 matmuls to MKL, which runs AVX2 code on AMD CPUs, while oneDNN
(PyTorch's own bf16 path) runs AVX-512 there. `linear` computes `x @ w.T` through oneDNN
for fp32 CPU tensors, in full fp32; `OneDNNLinear` is an `nn.Linear` whose forward and
backward matmuls use it. Everywhere else (CUDA, bf16, autocast, under `torch.compile`,
whose Inductor cannot lower this op in a training graph) the PyTorch op runs.

oneDNN's linear takes its input row-major, so a weight gradient `grad_y.T @ x` costs a
transposed copy of an activation there, which MKL's matmul does not need.
`OneDNNLinearTorchWeightGrad` therefore leaves the weight gradient to PyTorch's matmul:
which of the two wins depends on how much faster oneDNN is than MKL on the CPU at hand,
so both are measured (src/kernels/selection.py).
"""

from __future__ import annotations

from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn


def uses_onednn(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `linear(x, w)` goes to oneDNN: fp32 CPU tensors, eager, outside autocast."""
    return (
        x.device.type == w.device.type == "cpu"
        and not torch.compiler.is_compiling()  # Inductor cannot lower this op in training graphs
        and x.dtype == w.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and not torch.is_autocast_enabled("cpu")
    )


def linear(x: torch.Tensor, w: torch.Tensor, onednn: bool = True) -> torch.Tensor:
    """`x @ w.T` for x (..., in) and w (out, in), without autograd; oneDNN for fp32 on CPU
    unless `onednn` is False."""
    if onednn and uses_onednn(x, w):
        return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
    return F.linear(x, w)


def weight_grad(grad_y: torch.Tensor, x: torch.Tensor, onednn: bool = True) -> torch.Tensor:
    """`grad_y.T @ x` for grad_y (N, out) and x (N, in): a linear layer's weight gradient.

    On the oneDNN path it is computed transposed, `(x.T @ grad_y).T`, which takes the
    (N, out) operand as a plain weight: as `grad_y.T` it would be copied first, 200 MB for
    a 1024-token chunk of 49,152-wide fp32 logit gradients.
    """
    if onednn and uses_onednn(x, grad_y):
        return linear(x.t(), grad_y.t()).t()
    return grad_y.t() @ x


class _OneDNNLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, onednn_weight_grad: bool) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        ctx.onednn_weight_grad = onednn_weight_grad
        return linear(x, w)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, w = ctx.saved_tensors
        grad_x = linear(grad_y, w.t()) if ctx.needs_input_grad[0] else None  # (..., in)
        grad_w = None
        if ctx.needs_input_grad[1]:  # (out, in)
            grad_y, x = grad_y.reshape(-1, grad_y.shape[-1]), x.reshape(-1, x.shape[-1])
            grad_w = weight_grad(grad_y, x, onednn=ctx.onednn_weight_grad)
        return grad_x, grad_w, None


_Replacement = TypeVar("_Replacement", bound="LinearReplacement")


class LinearReplacement(nn.Linear):
    """An `nn.Linear` subclass that a kernel swaps in for a plain layer, sharing its parameters."""

    @classmethod
    def from_linear(cls: type[_Replacement], linear: nn.Linear) -> _Replacement:
        """The same layer, sharing `linear`'s parameters (ties survive)."""
        new = cls(linear.in_features, linear.out_features, bias=False, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new


class OneDNNLinear(LinearReplacement):
    """`nn.Linear` whose fp32 CPU matmuls (forward and backward) run on oneDNN; bias-free only."""

    onednn_weight_grad = True  # whether the weight gradient is oneDNN's too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None or not uses_onednn(x, self.weight):
            return super().forward(x)
        if torch.is_grad_enabled():
            return _OneDNNLinearFunction.apply(x, self.weight, self.onednn_weight_grad)
        return linear(x, self.weight)


class OneDNNLinearTorchWeightGrad(OneDNNLinear):
    """`OneDNNLinear` whose weight gradient is PyTorch's matmul (MKL's on x86): no transposed
    copy of the layer's input per backward."""

    onednn_weight_grad = False
