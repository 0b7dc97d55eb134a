"""`apply_cpu_kernels` swaps modules without touching parameters, and the model computes the same."""

import pytest
import torch
from torch import nn

from src.errors import UserError
from src.kernels import KERNELS, applied_kernels, apply_cpu_kernels, loss_matmuls
from src.kernels import attention as attention_kernel
from src.kernels.attention import BlockwiseCausalAttention
from src.kernels.linear import OneDNNLinear, uses_onednn
from src.kernels.loss import lm_cross_entropy
from src.kernels.rms_norm import FusedRMSNorm
from src.models import SmolLM2, SmolLM2Config


def tiny() -> SmolLM2:
    return SmolLM2(SmolLM2Config.from_preset("tiny"))


def test_converter_swaps_every_module_and_keeps_parameters_ties_and_keys():
    model = tiny()
    params, keys = dict(model.named_parameters()), list(model.state_dict())
    assert apply_cpu_kernels(model, KERNELS) is model
    assert {name: p for name, p in model.named_parameters()} == params  # the same tensor objects
    assert list(model.state_dict()) == keys
    assert model.lm_head.weight is model.embed.weight
    assert isinstance(model.lm_head, OneDNNLinear) and isinstance(model.norm, FusedRMSNorm)
    block = model.blocks[1]
    assert isinstance(block.attn.sdpa, BlockwiseCausalAttention) and isinstance(block.mlp_norm, FusedRMSNorm)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 7 * len(model.blocks) + 1 and all(type(m) is OneDNNLinear for m in linears)


def test_the_first_named_linear_kernel_takes_the_layers_and_the_loss_follows_it():
    both = ["onednn_linear_torch_wgrad", "onednn_linear"]
    assert applied_kernels(apply_cpu_kernels(tiny(), both)) == ["onednn_linear_torch_wgrad"]
    assert loss_matmuls(both) == {"onednn": True, "onednn_weight_grad": False}
    assert loss_matmuls(["rms_norm", "onednn_linear"]) == {"onednn": True, "onednn_weight_grad": True}
    assert loss_matmuls(["causal_attention"]) == loss_matmuls(["packed_linear"]) == {"onednn": False}
    assert loss_matmuls(["upcast_attention", "upcast_linear"]) == {"onednn": False, "upcast": True}


def test_converter_applies_only_the_named_kernels_and_once():
    model = apply_cpu_kernels(tiny(), ["rms_norm"])
    assert type(model.norm) is FusedRMSNorm and type(model.lm_head) is nn.Linear
    norm = model.norm
    apply_cpu_kernels(model, KERNELS)
    assert model.norm is norm  # already converted: left as it is


@pytest.mark.parametrize(
    ("kernels", "message"),
    [
        (
            ["rms_norm", "flash"],
            "unknown kernels flash; choose from causal_attention, rms_norm, onednn_linear",
        ),
        ("rms_norm", "kernels must be a list"),
    ],
)
def test_unknown_kernels_are_a_one_line_user_error(kernels, message):
    with pytest.raises(UserError, match=message) as info:
        apply_cpu_kernels(tiny(), kernels)
    assert "\n" not in str(info.value)


def model_loss_and_grads(model, x, onednn, **matmuls):
    model.zero_grad(set_to_none=True)
    hidden = model.hidden_states(x[:, :-1])
    loss = lm_cross_entropy(hidden, model.lm_head.weight, x[:, 1:], chunk_size=16, onednn=onednn, **matmuls)
    loss.backward()
    return [loss.detach()] + [p.grad.clone() for p in model.parameters()]


def plain_and_converted(kernels=KERNELS) -> tuple[SmolLM2, SmolLM2]:
    plain, converted = tiny(), tiny()
    converted.load_state_dict(plain.state_dict())
    return plain, apply_cpu_kernels(converted, kernels)


def test_model_with_and_without_kernels_gives_the_same_loss_and_gradients_in_fp32():
    plain, converted = plain_and_converted()
    x = torch.randint(0, plain.config.vocab_size, (2, 41))
    got, expected = (
        model_loss_and_grads(converted, x, onednn=True),
        model_loss_and_grads(plain, x, onednn=False),
    )
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kernels", [KERNELS, ["rms_norm", "upcast_attention", "upcast_linear"]])
def test_model_with_kernels_under_bf16_autocast_is_as_close_to_fp32_as_without(kernels):
    """bf16 rounds differently on each path; neither may stray further from the fp32 result."""
    plain, converted = plain_and_converted(kernels)
    x = torch.randint(0, plain.config.vocab_size, (2, 41))
    exact = model_loss_and_grads(plain, x, onednn=False)
    with torch.autocast("cpu", torch.bfloat16):
        got = model_loss_and_grads(converted, x, **loss_matmuls(kernels))
        expected = model_loss_and_grads(plain, x, False)
    for a, b, want in zip(got, expected, exact, strict=True):
        kernels_error, plain_error = ((t - want).norm() / want.norm() for t in (a, b))
        assert kernels_error <= 1.5 * plain_error + 1e-3


def test_kernels_act_on_cpu_tensors_only(monkeypatch):
    """Off the CPU the swapped modules run PyTorch's ops (meta tensors stand in for CUDA here)."""
    calls = []
    blockwise = attention_kernel.causal_attention
    monkeypatch.setattr(attention_kernel, "causal_attention", lambda *t: calls.append(t) or blockwise(*t))
    q, k, v = torch.randn(1, 4, 8, 16), torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    attention = BlockwiseCausalAttention()
    assert attention(q.to("meta"), k.to("meta"), v.to("meta")).shape == q.shape and not calls
    assert attention(q, k, v).shape == q.shape and len(calls) == 1
    w = torch.randn(16, 16)
    assert not uses_onednn(q.to("meta"), w.to("meta"))
    assert uses_onednn(q, w) == torch.backends.mkldnn.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_converted_model_on_cuda_computes_what_the_plain_model_does():
    plain, converted = plain_and_converted()
    plain.cuda(), converted.cuda()
    x = torch.randint(0, plain.config.vocab_size, (2, 33), device="cuda")
    for dtype in ("fp32", "bf16"):
        with torch.autocast("cuda", torch.bfloat16, enabled=dtype == "bf16"):
            got = model_loss_and_grads(converted, x, onednn=True)
            expected = model_loss_and_grads(plain, x, onednn=False)
        for a, b in zip(got, expected, strict=True):
            assert (a - b).float().norm() <= 1e-2 * b.float().norm() + 1e-6
