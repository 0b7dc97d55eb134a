"""The RMSNorm kernel computes what `F.rms_norm` and the model's RMSNorm compute."""

import pytest
import torch
import torch.nn.functional as F

from src.kernels.rms_norm import FusedRMSNorm, rms_norm
from src.models.smollm2 import RMSNorm


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_f_rms_norm_then_cast(dtype):
    x = (3 * torch.randn(2, 7, 48)).requires_grad_()
    weight = (1 + torch.randn(48) / 4).requires_grad_()
    grad_y = torch.randn(2, 7, 48, dtype=dtype)
    y = rms_norm(x, weight, 1e-5, dtype)
    assert "RMSNormFunction" in type(y.grad_fn).__name__  # the hand-written backward ran
    got = (y, *torch.autograd.grad(y, (x, weight), grad_y))
    y = F.rms_norm(x, (48,), weight, 1e-5).to(dtype)
    expected = (y, *torch.autograd.grad(y, (x, weight), grad_y))
    assert got[0].dtype == dtype
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def norms() -> tuple[RMSNorm, FusedRMSNorm]:
    plain = RMSNorm(48, 1e-5)
    with torch.no_grad():
        plain.weight.add_(torch.randn(48) / 4)
    return plain, FusedRMSNorm.from_norm(plain)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_fused_norm_equals_the_model_norm_and_writes_the_autocast_dtype(x_dtype):
    """Under autocast its output is already in the dtype the projections would cast it to."""
    plain, fused = norms()
    assert fused.weight is plain.weight and fused.eps == plain.eps
    x = torch.randn(3, 5, 48, dtype=x_dtype)
    with torch.autocast("cpu", torch.bfloat16):
        got, expected = fused(x), plain(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.to(torch.bfloat16))


def test_fused_norm_without_autocast_equals_the_model_norm_in_value_and_gradients():
    plain, fused = norms()
    x = torch.randn(4, 48, requires_grad=True)
    grad_y = torch.randn(4, 48)
    results = []
    for norm in (fused, plain):
        y = norm(x)
        results.append((y, *torch.autograd.grad(y, (x, norm.weight), grad_y)))
    for a, b in zip(*results, strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wants", ["x", "weight"])
def test_rms_norm_gradient_of_one_input_alone_from_a_strided_gradient(wants):
    """A frozen weight (or input) gets no gradient; the upstream gradient may be any view."""
    x = (3 * torch.randn(5, 2, 48)).requires_grad_(wants == "x")
    weight = (1 + torch.randn(48) / 4).requires_grad_(wants == "weight")
    grad_y = torch.randn(2, 5, 48).transpose(0, 1)  # not contiguous
    leaf = x if wants == "x" else weight
    (got,) = torch.autograd.grad(rms_norm(x, weight, 1e-5, torch.float32), leaf, grad_y)
    (expected,) = torch.autograd.grad(F.rms_norm(x, (48,), weight, 1e-5), leaf, grad_y)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
