"""Blockwise causal attention computes what SDPA computes, in value and gradients."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from src.kernels.attention import BlockwiseCausalAttention, causal_attention, keeps_probabilities
from src.models.smollm2 import ScaledDotProductAttention


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
    got = output_and_grads(partial(causal_attention, block=block, keep=keep), q, k, v, grad_out)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_attention_in_bf16_is_as_close_to_fp32_as_sdpa_in_bf16():
    q, k, v, grad_out = attention_inputs(2, 96, 6, 2, 32, dtype=torch.bfloat16)
    fp32 = (t.float().detach().requires_grad_() for t in (q, k, v))
    exact = output_and_grads(sdpa, *fp32, grad_out.float())
    ours = output_and_grads(partial(causal_attention, block=32), q, k, v, grad_out)
    theirs = output_and_grads(sdpa, q, k, v, grad_out)
    for a, b, want in zip(ours, theirs, exact, strict=True):
        assert a.dtype == torch.bfloat16
        ours_error = (a.float() - want).norm() / want.norm()
        sdpa_error = (b.float() - want).norm() / want.norm()
        assert ours_error < max(3 * sdpa_error, 1e-2)


def test_probabilities_are_kept_for_short_16_bit_sequences_only():
    assert keeps_probabilities(torch.empty(1, 1024, 2, 8, dtype=torch.bfloat16))
    assert not keeps_probabilities(torch.empty(1, 1025, 2, 8, dtype=torch.bfloat16))
    assert not keeps_probabilities(torch.empty(1, 64, 2, 8))  # fp32: twice the bytes


def test_kept_probabilities_live_only_while_a_graph_needs_them():
    q, k, v, _ = attention_inputs(1, 64, 4, 2, 8, dtype=torch.bfloat16)
    assert keeps_probabilities(q)
    y = causal_attention(q, k, v, block=16)
    assert len(y.grad_fn.saved_tensors) == 3 + 64 // 16  # q, k, v (row layouts) and one tensor per block
    with torch.no_grad():
        assert causal_attention(q, k, v, block=16).grad_fn is None


def test_blockwise_module_is_the_sdpa_module_on_model_layouts():
    """The swapped-in module takes and returns (B, heads, T, D), like the model's own."""
    q, k, v, grad_out = (t.transpose(1, 2) for t in attention_inputs(2, 40, 6, 2, 16))
    got = output_and_grads(BlockwiseCausalAttention(), q, k, v, grad_out)
    expected = output_and_grads(ScaledDotProductAttention(), q, k, v, grad_out)
    for a, b in zip(got, expected, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_causal_attention_takes_strided_inputs_and_gradients():
    """Heads-major tensors seen as (B, T, heads, D), as a caller may hand them over."""
    q, k, v, grad_out = (
        t.detach().transpose(1, 2).contiguous().transpose(1, 2) for t in attention_inputs(2, 40, 6, 2, 16)
    )
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert not any(t.is_contiguous() for t in (q, k, v, grad_out))
    got = output_and_grads(partial(causal_attention, block=16), q, k, v, grad_out)
    expected = output_and_grads(sdpa, q, k, v, grad_out)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
