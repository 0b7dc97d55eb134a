"""The packed bf16 linear gives PyTorch's bits in inference, follows its weight, and steps aside elsewhere."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.kernels import apply_cpu_kernels
from src.kernels.packed_linear import PackedLinear, packing_available
from src.models import SmolLM2, SmolLM2Config, generate

pytestmark = pytest.mark.skipif(not packing_available(), reason="needs oneDNN bf16")


def layer(dtype=torch.bfloat16) -> PackedLinear:
    torch.manual_seed(0)
    return PackedLinear.from_linear(nn.Linear(48, 80, bias=False, dtype=dtype))


@pytest.mark.parametrize("shape", [(1, 48), (5, 48), (2, 7, 48)])
def test_inference_gives_the_bits_of_f_linear_from_a_packed_weight(shape):
    packed = layer()
    x = torch.randn(shape, dtype=torch.bfloat16)
    with torch.inference_mode():
        y = packed(x)
    assert packed._packed is not None  # the packed path ran
    assert torch.equal(y, F.linear(x, packed.weight.detach()))


def test_the_packed_weight_follows_in_place_writes_and_new_tensors():
    packed, x = layer(), torch.randn(3, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        before = packed(x)
        packed.load_state_dict({"weight": 2 * packed.weight})  # an in-place copy into the weight
        assert torch.equal(packed(x), 2 * before)
        packed.float().bfloat16()  # a round trip through new tensors, which may reuse freed addresses
        packed.weight.mul_(0.5)
        assert torch.equal(packed(x), before)


def test_training_and_fp32_take_the_plain_path():
    packed = layer()
    x = torch.randn(3, 48, dtype=torch.bfloat16, requires_grad=True)
    with torch.inference_mode():
        packed(x.detach())
    assert packed._packed is not None
    y = packed(x)  # gradients wanted: nn.Linear's own forward, differentiable, and the packed copy freed
    y.sum().backward()
    assert packed._packed is None and torch.equal(x.grad, packed.weight.detach().sum(0).expand(3, -1))

    fp32 = layer(torch.float32)
    x32 = torch.randn(3, 48)
    with torch.inference_mode():
        assert torch.equal(fp32(x32), F.linear(x32, fp32.weight)) and fp32._packed is None


def test_copies_and_pickles_leave_the_packed_weight_behind_and_pack_their_own():
    packed, x = layer(), torch.randn(2, 48, dtype=torch.bfloat16)
    with torch.inference_mode():
        expected = packed(x)
    for clone in (copy.deepcopy(packed), pickle.loads(pickle.dumps(packed))):
        assert clone._packed is None
        with torch.inference_mode():
            assert torch.equal(clone(x), expected) and clone._packed is not None


def test_weights_made_in_inference_mode_take_the_plain_path():
    with torch.inference_mode():  # such tensors have no version counter to see writes by
        packed, x = layer(), torch.randn(2, 48, dtype=torch.bfloat16)
        assert torch.equal(packed(x), F.linear(x, packed.weight)) and packed._packed is None


def test_a_bf16_model_decodes_the_same_tokens_with_packed_linears():
    torch.manual_seed(0)
    plain = SmolLM2(SmolLM2Config.from_preset("tiny")).eval().bfloat16()
    packed = apply_cpu_kernels(copy.deepcopy(plain), ["packed_linear"])
    assert packed.lm_head.weight is packed.embed.weight  # the tie survives
    assert all(type(m) is PackedLinear for m in packed.modules() if isinstance(m, nn.Linear))
    prompt = torch.randint(0, plain.config.vocab_size, (2, 5))
    assert torch.equal(generate(packed, prompt, 12), generate(plain, prompt, 12))
