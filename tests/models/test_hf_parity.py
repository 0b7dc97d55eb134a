"""Our decoder against transformers' LlamaForCausalLM on the same weights."""

import pytest
import torch

from src.models import SmolLM2, SmolLM2Config, generate
from src.models.hf import from_hf_state_dict
from tests.models.llama_twin import llama_twin

# The real 135M width with only 2 layers keeps the test fast.
WIDE_2_LAYER = dict(
    hidden_size=576, intermediate_size=1536, num_layers=2, num_heads=9, num_kv_heads=3, rope_theta=100000.0
)
CONFIGS = {"tiny": SmolLM2Config.from_preset("tiny"), "135m_width": SmolLM2Config(**WIDE_2_LAYER)}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_llama_converted_ours_to_hf(name):
    model = SmolLM2(CONFIGS[name]).eval()
    llama = llama_twin(model)
    x = torch.randint(0, model.config.vocab_size, (2, 48))
    with torch.no_grad():
        assert (model(x) - llama(x).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_llama_converted_hf_to_ours(name):
    config = CONFIGS[name]
    donor = llama_twin(SmolLM2(config))
    for p in donor.parameters():  # fresh weights that only the HF model has
        torch.nn.init.normal_(p, std=0.05)
    model = SmolLM2(config).eval()
    model.load_state_dict(from_hf_state_dict(donor.state_dict(), config), strict=False)
    assert model.lm_head.weight is model.embed.weight
    x = torch.randint(0, config.vocab_size, (1, 40))
    with torch.no_grad():
        assert (model(x) - donor(x).logits).abs().max().item() <= 1e-4


def test_kv_cache_decoding_equals_full_recompute():
    model = SmolLM2(CONFIGS["135m_width"]).eval()
    x = torch.randint(0, model.config.vocab_size, (2, 40))
    cache = model.new_kv_cache(batch_size=2, max_tokens=40)
    with torch.no_grad():
        full = model(x)
        chunks = [model(x[:, :17], cache, 0), model(x[:, 17:30], cache, 17)]
        chunks += [model(x[:, t : t + 1], cache, t) for t in range(30, 40)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_greedy_generation_equals_transformers_generate(name):
    model = SmolLM2(CONFIGS[name]).eval()
    llama = llama_twin(model)
    prompt = torch.randint(0, model.config.vocab_size, (1, 7))
    ours = generate(model, prompt, max_new_tokens=32, temperature=0.0)
    theirs = llama.generate(prompt, max_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert ours.shape == (1, 39)
    assert ours.tolist() == theirs.tolist()
