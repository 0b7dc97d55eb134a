"""Grouped-query attention takes a fused SDPA kernel in every dtype, with the same results.

SDPA's `enable_gqa` sends CUDA fp32 to the math kernel; there K and V are repeated instead.
The CPU runs here check that each way of grouping computes what `enable_gqa` computes, and
(through the profiler) which kernel runs.
"""

import pytest
import torch
import torch.nn.functional as F

import src.models.smollm2 as smollm2
from benchmarks.sdpa_kernels import MATH, sdpa_kernels
from src.models import SmolLM2, SmolLM2Config
from src.models.smollm2 import fused_kernel_takes_gqa, grouped_attention, masked_grouped_attention

CPU_FLASH = "aten::_scaled_dot_product_flash_attention_for_cpu"


@pytest.mark.parametrize(
    ("device", "dtype", "takes"),
    [
        ("cpu", torch.float32, True),
        ("cpu", torch.bfloat16, True),
        ("cuda", torch.bfloat16, True),
        ("cuda", torch.float16, True),
        ("cuda", torch.float32, False),  # flash and cuDNN are 16-bit only; enable_gqa would mean math
        ("mps", torch.float32, False),
    ],
)
def test_grouped_key_values_go_to_sdpa_only_where_its_fused_kernel_takes_them(device, dtype, takes):
    assert fused_kernel_takes_gqa(torch.device(device), dtype) is takes


def qkv(dtype: torch.dtype, T: int = 24, S: int | None = None) -> tuple[torch.Tensor, ...]:
    """q (2, 6, T, 16) and k, v (2, 2, S, 16): three query heads per key/value head."""
    g = torch.Generator().manual_seed(0)
    S = S or T
    shapes = [(2, 6, T, 16), (2, 2, S, 16), (2, 2, S, 16)]
    return tuple(torch.randn(shape, generator=g).to(dtype) for shape in shapes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repeated_key_values_give_exactly_what_enable_gqa_gives(dtype, monkeypatch):
    q, k, v = qkv(dtype)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    monkeypatch.setattr(smollm2, "fused_kernel_takes_gqa", lambda device, dtype: False)  # as on CUDA fp32
    assert torch.equal(grouped_attention(q, k, v, is_causal=True), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("T", "masked"), [(3, True), (1, True), (1, False)])
def test_query_heads_folded_into_rows_give_what_a_masked_enable_gqa_gives(dtype, T, masked):
    q, k, v = qkv(dtype, T=T, S=20)
    mask = torch.arange(20)[None, :] <= torch.arange(10, 10 + T)[:, None]  # queries at 10..
    mask = mask if masked else None  # unmasked: every key seen, as one token at the cache's end
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2  # same math, another summation order
    torch.testing.assert_close(masked_grouped_attention(q, k, v, mask), expected, atol=tolerance, rtol=0)


def test_training_and_decoding_run_a_fused_kernel_not_math(monkeypatch):
    model = SmolLM2(SmolLM2Config.from_preset("tiny"))
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    training = sdpa_kernels(lambda: model.hidden_states(x).sum().backward())
    assert training == {CPU_FLASH, CPU_FLASH + "_backward"}
    cache = model.eval().new_kv_cache(2, 32)
    with torch.no_grad():
        model(x, cache, 0)
        assert sdpa_kernels(lambda: model(x[:, :1], cache, torch.tensor([16]))) == {CPU_FLASH}
    monkeypatch.setattr(smollm2, "fused_kernel_takes_gqa", lambda device, dtype: False)
    assert MATH not in sdpa_kernels(lambda: model.train().hidden_states(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("bf16", "kernels"), [(True, ("flash", "cudnn")), (False, ("efficient",))])
def test_cuda_training_takes_a_fused_kernel_in_bf16_and_memory_efficient_attention_in_fp32(bf16, kernels):
    # bf16: flash, or cuDNN's attention where PyTorch puts it first (Hopper and later, cuDNN >= 9.15)
    model = SmolLM2(SmolLM2Config.from_preset("tiny")).cuda()
    x = torch.randint(0, model.config.vocab_size, (2, 64), device="cuda")
    with torch.autocast("cuda", torch.bfloat16, enabled=bf16):
        ran = sdpa_kernels(lambda: model.hidden_states(x).float().sum().backward())
    ops = [f"aten::_scaled_dot_product_{kernel}_attention" for kernel in kernels]
    assert ran in [{op, op + "_backward"} for op in ops]
