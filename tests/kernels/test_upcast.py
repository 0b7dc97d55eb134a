"""bf16 computed in fp32: the bf16 matmul's products of the bf16-rounded operands, at fp32's speed."""

from unittest.mock import patch

import torch
import torch.nn.functional as F
from torch import nn

from src.kernels import upcast
from src.kernels.attention import causal_attention
from src.kernels.loss import lm_cross_entropy
from src.kernels.upcast import UPCAST_MIN_ROWS, UpcastCausalAttention, UpcastLinear, bf16_compute

BF16 = torch.bfloat16


def rounded(t: torch.Tensor) -> torch.Tensor:
    """t rounded to bf16, in fp64: the operand a bf16 matmul multiplies, for exact references."""
    return t.detach().to(BF16).double()


def test_under_autocast_the_layer_multiplies_the_bf16_rounded_operands_and_returns_bf16():
    torch.manual_seed(0)
    plain = nn.Linear(48, 40, bias=False)
    layer = UpcastLinear.from_linear(plain)
    x = torch.randn(3, UPCAST_MIN_ROWS // 2, 48, requires_grad=True)  # enough rows to upcast
    grad_y = torch.randn(3, UPCAST_MIN_ROWS // 2, 40)
    with torch.autocast("cpu", BF16):
        assert bf16_compute(x, layer.weight)
        y = layer(x)
    grad_x, grad_w = torch.autograd.grad(y, (x, layer.weight), grad_y.to(BF16))
    assert y.dtype == BF16 and grad_x.dtype == grad_w.dtype == torch.float32
    g = rounded(grad_y)
    # The forward output is the exact product rounded once to bf16, but for a rare tie.
    exact = (rounded(x) @ rounded(plain.weight).T).to(BF16)
    assert (y != exact).float().mean() < 0.01
    # Gradients are fp32 sums of exact products of the bf16-rounded operands: an operand left
    # unrounded would be off by about 2**-9 relative, far outside this tolerance.
    torch.testing.assert_close(
        grad_w.double(), g.flatten(0, 1).T @ rounded(x).flatten(0, 1), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(grad_x.double(), g @ rounded(plain.weight), rtol=1e-5, atol=1e-5)
    # Within bf16's rounding of PyTorch's own bf16 linear under autocast.
    with torch.autocast("cpu", BF16):
        expected = F.linear(x, plain.weight)
    torch.testing.assert_close(y, expected, rtol=2**-7, atol=1e-2)


def test_bf16_inference_without_autocast_returns_the_rounded_product():
    torch.manual_seed(1)
    layer = UpcastLinear.from_linear(nn.Linear(32, 24, bias=False).to(BF16))
    x = torch.randn(2, UPCAST_MIN_ROWS // 2, 32, dtype=BF16)  # a prefill: enough rows to upcast
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == BF16
    assert (y != (x.double() @ layer.weight.double().T).to(BF16)).float().mean() < 0.02
    assert [inp.dtype for inp, _ in linear_calls(layer, x)] == [torch.float32]  # computed in fp32


def test_a_weight_too_big_for_cache_is_widened_a_slice_at_a_time(monkeypatch):
    torch.manual_seed(4)
    layer = UpcastLinear.from_linear(nn.Linear(48, 40, bias=False).to(BF16))
    x = torch.randn(2, UPCAST_MIN_ROWS, 48, dtype=BF16)
    assert fp32_weight_shapes(linear_calls(layer, x)) == [(40, 48)]  # 7.5 KiB in fp32: widened whole
    monkeypatch.setattr(upcast, "UPCAST_WHOLE_BYTES", 4 * 48 * 16)  # as if only 16 rows fit
    monkeypatch.setattr(upcast, "UPCAST_SLICE_BYTES", 4 * 48 * 16)
    assert fp32_weight_shapes(linear_calls(layer, x)) == [(16, 48), (16, 48), (8, 48)]
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == BF16 and y.shape == (2, UPCAST_MIN_ROWS, 40)
    exact = (x.double() @ layer.weight.double().T).to(BF16)  # every column, each slice's included
    assert (y != exact).float().mean() < 0.02


def fp32_weight_shapes(calls: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[int, ...]]:
    assert all(w.dtype == torch.float32 for _, w in calls)
    return [tuple(w.shape) for _, w in calls]


def test_one_token_decoding_is_pytorchs_bf16_linear():
    layer = UpcastLinear.from_linear(nn.Linear(32, 24, bias=False).to(BF16))
    x = torch.randn(UPCAST_MIN_ROWS - 1, 1, 32, dtype=BF16)  # one token for each of 7 sequences
    assert [inp.dtype for inp, _ in linear_calls(layer, x)] == [BF16]
    with torch.no_grad():
        assert torch.equal(layer(x), F.linear(x, layer.weight))


def linear_calls(layer: nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (input, weight) of each `F.linear` that `layer(x)` calls, without gradients."""
    calls, linear = [], F.linear

    def spy(x: torch.Tensor, w: torch.Tensor, *args) -> torch.Tensor:
        calls.append((x, w))
        return linear(x, w, *args)

    with patch.object(F, "linear", spy), torch.no_grad():
        layer(x)
    return calls


def test_fp32_without_autocast_is_pytorchs_linear_bit_for_bit():
    layer = UpcastLinear.from_linear(nn.Linear(16, 8, bias=False))
    x = torch.randn(5, 16)
    assert not bf16_compute(x, layer.weight)
    assert torch.equal(layer(x), F.linear(x, layer.weight))
    with torch.autocast("cpu", torch.float16):  # another autocast dtype: PyTorch's op
        assert not bf16_compute(x, layer.weight)


def test_upcast_attention_is_fp32_causal_attention_of_the_bf16_inputs():
    torch.manual_seed(2)
    q = torch.randn(2, 6, 20, 8, dtype=BF16, requires_grad=True)  # (B, H, T, D)
    k = torch.randn(2, 2, 20, 8, dtype=BF16, requires_grad=True)
    v = torch.randn(2, 2, 20, 8, dtype=BF16, requires_grad=True)
    y = UpcastCausalAttention()(q, k, v)
    assert y.dtype == BF16
    grads = torch.autograd.grad(y, (q, k, v), torch.ones_like(y))
    assert all(g.dtype == BF16 for g in grads)
    qf, kf, vf = (t.detach().float().requires_grad_() for t in (q, k, v))
    expected = causal_attention(*(t.transpose(1, 2) for t in (qf, kf, vf)), block=8).transpose(1, 2)
    assert torch.equal(y, expected.to(BF16))
    expected_grads = torch.autograd.grad(expected, (qf, kf, vf), torch.ones_like(expected))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want.to(BF16), rtol=2**-7, atol=1e-2)


def test_the_upcast_loss_is_the_fp32_loss_of_the_bf16_rounded_operands():
    torch.manual_seed(3)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (2, 9))
    targets[0, -1] = -100
    with torch.autocast("cpu", BF16):
        loss = lm_cross_entropy(hidden, weight, targets, chunk_size=4, upcast=True)
    grad_h, grad_w = torch.autograd.grad(loss, (hidden, weight))
    h, w = (rounded(t).requires_grad_() for t in (hidden, weight))
    expected = F.cross_entropy((h @ w.T).flatten(0, 1), targets.flatten())
    expected_grads = torch.autograd.grad(expected, (h, w))
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    for got, want in zip((grad_h, grad_w), expected_grads, strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", BF16):  # bf16 logits: the same loss but for their rounding
        bf16_loss = lm_cross_entropy(hidden, weight, targets, chunk_size=4)
    torch.testing.assert_close(bf16_loss, loss, rtol=1e-2, atol=1e-2)
