"""The oneDNN linear layer and weight gradient compute what PyTorch's matmuls compute."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.kernels.linear import OneDNNLinear, OneDNNLinearTorchWeightGrad, uses_onednn, weight_grad


def onednn_layer(in_features: int = 24, out_features: int = 40) -> OneDNNLinear:
    return OneDNNLinear.from_linear(nn.Linear(in_features, out_features, bias=False))


def test_linear_uses_onednn_for_fp32_on_cpu_and_equals_f_linear():
    layer = onednn_layer()
    x = torch.randn(3, 5, 24, requires_grad=True)
    assert uses_onednn(x, layer.weight) == torch.backends.mkldnn.is_available()
    grad_y = torch.randn(3, 5, 40)
    y = layer(x)
    got = (y, *torch.autograd.grad(y, (x, layer.weight), grad_y))
    y = F.linear(x, layer.weight)
    expected = (y, *torch.autograd.grad(y, (x, layer.weight), grad_y))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def outputs_and_grads(layer: nn.Linear, x: torch.Tensor, grad_y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    y = layer(x)
    return (y, *torch.autograd.grad(y, (x, layer.weight), grad_y))


def test_the_torch_weight_grad_variant_takes_pytorchs_weight_gradient_and_onednns_other_products():
    plain = nn.Linear(24, 40, bias=False)
    x, grad_y = torch.randn(3, 5, 24, requires_grad=True), torch.randn(3, 5, 40)
    onednn_y, onednn_grad_x, onednn_grad_w = outputs_and_grads(OneDNNLinear.from_linear(plain), x, grad_y)
    y, grad_x, grad_w = outputs_and_grads(OneDNNLinearTorchWeightGrad.from_linear(plain), x, grad_y)
    assert torch.equal(y, onednn_y) and torch.equal(grad_x, onednn_grad_x)
    assert torch.equal(
        grad_w, grad_y.reshape(15, 40).T @ x.detach().reshape(15, 24)
    )  # torch.mm's, bit for bit
    torch.testing.assert_close(grad_w, onednn_grad_w, atol=1e-5, rtol=1e-5)


def test_linear_under_autocast_is_the_plain_bf16_linear():
    layer = onednn_layer()
    x = torch.randn(4, 24)
    with torch.autocast("cpu", torch.bfloat16):
        assert not uses_onednn(x, layer.weight)
        y = layer(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y, F.linear(x, layer.weight))


def test_from_linear_shares_the_weight_and_keeps_the_keys():
    plain = nn.Linear(8, 6, bias=False)
    layer = OneDNNLinear.from_linear(plain)
    assert layer.weight is plain.weight and layer.bias is None
    assert list(layer.state_dict()) == list(plain.state_dict()) == ["weight"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_grad_is_grad_y_transposed_times_x(dtype):
    grad_y, x = torch.randn(50, 7, dtype=dtype), torch.randn(50, 12, dtype=dtype)
    got = weight_grad(grad_y, x)
    assert got.shape == (7, 12) and got.dtype == dtype
    torch.testing.assert_close(got.float(), grad_y.float().T @ x.float(), atol=0.1, rtol=2e-2)
    if dtype == torch.float32:
        torch.testing.assert_close(got, grad_y.T @ x, atol=1e-5, rtol=1e-5)
