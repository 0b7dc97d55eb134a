"""The CPU kernels compute what PyTorch's own ops compute, in value and gradients."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from src.models import SmolLM2, SmolLM2Config, cpu_kernels
from src.models.loss import lm_cross_entropy


@pytest.fixture
def pytorch_kernels():
    """Runs a test body with the CPU kernels switched off, then switches them back on."""
    with cpu_kernels.disabled():
        yield


def sdpa(q, k, v):
    """The reference: SDPA on (B, heads, T, D) transposes of (B, T, heads, D) inputs."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    return y.transpose(1, 2)


def attention_inputs(B, T, H, K, D, dtype=torch.float32):
    q, k, v = (torch.randn(B, T, n, D, dtype=dtype, requires_grad=True) for n in (H, K, K))
    return q, k, v, torch.randn(B, T, H, D, dtype=dtype)


def output_and_grads(fn, q, k, v, grad_out):
    y = fn(q, k, v)
    return (y, *torch.autograd.grad(y, (q, k, v), grad_out))


# B, T, H, K, D, block: blocks that divide T and blocks that do not; GQA, MHA and MQA.
SHAPES = [(2, 64, 6, 2, 16, 16), (2, 37, 4, 2, 8, 8), (1, 50, 4, 4, 16, 16), (3, 20, 4, 1, 8, 64)]


@pytest.mark.parametrize("keep", [False, True], ids=["recomputed", "kept"])
@pytest.mark.parametrize("shape", SHAPES)
def test_causal_attention_equals_sdpa_in_fp32(shape, keep):
    """Both backward paths: probabilities recomputed per block, or kept from forward."""
    *dims, block = shape
    q, k, v, grad_out = attention_inputs(*dims)
    expected = output_and_grads(sdpa, q, k, v, grad_out)
    attention = partial(cpu_kernels.causal_attention, block=block, keep=keep)
    got = output_and_grads(attention, q, k, v, grad_out)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_attention_in_bf16_is_as_close_to_fp32_as_sdpa_in_bf16():
    q, k, v, grad_out = attention_inputs(2, 96, 6, 2, 32, dtype=torch.bfloat16)
    fp32 = (t.float().detach().requires_grad_() for t in (q, k, v))
    exact = output_and_grads(sdpa, *fp32, grad_out.float())
    ours = output_and_grads(lambda *t: cpu_kernels.causal_attention(*t, block=32), q, k, v, grad_out)
    theirs = output_and_grads(sdpa, q, k, v, grad_out)
    for a, b, want in zip(ours, theirs, exact, strict=True):
        assert a.dtype == torch.bfloat16
        ours_error = (a.float() - want).norm() / want.norm()
        sdpa_error = (b.float() - want).norm() / want.norm()
        assert ours_error < max(3 * sdpa_error, 1e-2)


def test_probabilities_are_kept_for_short_16_bit_sequences_only():
    assert cpu_kernels.keeps_probabilities(torch.empty(1, 1024, 2, 8, dtype=torch.bfloat16))
    assert not cpu_kernels.keeps_probabilities(torch.empty(1, 1025, 2, 8, dtype=torch.bfloat16))
    assert not cpu_kernels.keeps_probabilities(torch.empty(1, 64, 2, 8))  # fp32: twice the bytes


def test_kept_probabilities_live_only_while_a_graph_needs_them():
    q, k, v, _ = attention_inputs(1, 64, 4, 2, 8, dtype=torch.bfloat16)
    assert cpu_kernels.keeps_probabilities(q)
    y = cpu_kernels.causal_attention(q, k, v, block=16)
    assert len(y.grad_fn.saved_tensors) == 3 + 64 // 16  # q, k, v (row layouts) and one tensor per block
    with torch.no_grad():
        assert cpu_kernels.causal_attention(q, k, v, block=16).grad_fn is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_equals_f_rms_norm_then_cast(dtype):
    x = (3 * torch.randn(2, 7, 48)).requires_grad_()
    weight = (1 + torch.randn(48) / 4).requires_grad_()
    grad_y = torch.randn(2, 7, 48, dtype=dtype)
    y = cpu_kernels.rms_norm(x, weight, 1e-5, dtype)
    got = (y, *torch.autograd.grad(y, (x, weight), grad_y))
    y = F.rms_norm(x, (48,), weight, 1e-5).to(dtype)
    expected = (y, *torch.autograd.grad(y, (x, weight), grad_y))
    assert got[0].dtype == dtype
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_uses_onednn_for_fp32_on_cpu_and_equals_f_linear():
    layer = cpu_kernels.Linear(24, 40)
    x = torch.randn(3, 5, 24, requires_grad=True)
    assert cpu_kernels._use_onednn(x, layer.weight) == torch.backends.mkldnn.is_available()
    grad_y = torch.randn(3, 5, 40)
    y = layer(x)
    got = (y, *torch.autograd.grad(y, (x, layer.weight), grad_y))
    y = F.linear(x, layer.weight)
    expected = (y, *torch.autograd.grad(y, (x, layer.weight), grad_y))
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_linear_under_autocast_is_the_plain_bf16_linear():
    layer = cpu_kernels.Linear(24, 40)
    x = torch.randn(4, 24)
    with torch.autocast("cpu", torch.bfloat16):
        assert not cpu_kernels._use_onednn(x, layer.weight)
        y = layer(x)
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y, F.linear(x, layer.weight))


def test_switched_off_the_model_uses_pytorch_kernels(pytorch_kernels):
    q = torch.randn(1, 4, 2, 8)
    assert not cpu_kernels.use_causal_attention(q)
    assert not cpu_kernels._use_onednn(q, torch.randn(8, 8))
    with cpu_kernels.disabled():  # nested: restores the setting it found (off)
        pass
    assert not cpu_kernels.use_causal_attention(q)


def model_loss_and_grads(model, x):
    model.zero_grad(set_to_none=True)
    loss = lm_cross_entropy(model.hidden_states(x[:, :-1]), model.lm_head.weight, x[:, 1:], chunk_size=16)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_model_with_and_without_cpu_kernels_gives_the_same_loss_and_gradients(dtype):
    torch.manual_seed(0)
    model = SmolLM2(SmolLM2Config.from_preset("tiny"))
    x = torch.randint(0, model.config.vocab_size, (2, 41))
    with torch.autocast("cpu", torch.bfloat16, enabled=dtype == "bf16"):
        results = [model_loss_and_grads(model, x)]
        with cpu_kernels.disabled():
            results.append(model_loss_and_grads(model, x))
    for got, expected in zip(*results, strict=True):
        if dtype == "fp32":
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        else:  # bf16 rounding differs elementwise; the tensors agree as a whole
            assert (got - expected).norm() <= 2e-2 * expected.norm()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_grad_is_grad_y_transposed_times_x(dtype):
    grad_y, x = torch.randn(50, 7, dtype=dtype), torch.randn(50, 12, dtype=dtype)
    got = cpu_kernels.weight_grad(grad_y, x)
    assert got.shape == (7, 12) and got.dtype == dtype
    torch.testing.assert_close(got.float(), grad_y.float().T @ x.float(), atol=0.1, rtol=2e-2)
    if dtype == torch.float32:
        torch.testing.assert_close(got, grad_y.T @ x, atol=1e-5, rtol=1e-5)
