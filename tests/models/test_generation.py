import pytest
import torch

from src.errors import UserError
from src.models import SmolLM2, SmolLM2Config, generate, generate_tokens
from src.models.generation import sample_next


@pytest.fixture(scope="module")
def model() -> SmolLM2:
    torch.manual_seed(0)
    return SmolLM2(SmolLM2Config.from_preset("tiny")).eval()


def test_top_k_one_is_greedy():
    logits = torch.randn(4, 100)
    picked = sample_next(logits, temperature=1.0, top_k=1)
    assert torch.equal(picked, logits.argmax(-1))


def test_top_p_keeps_only_the_nucleus():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p=0.7 keeps the first two tokens only.
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log().repeat(500, 1)
    picked = sample_next(logits, temperature=1.0, top_p=0.7, generator=torch.Generator().manual_seed(0))
    assert set(picked.tolist()) == {0, 1}


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    prompt = torch.tensor([[1, 2, 3]])
    kwargs = dict(max_new_tokens=20, temperature=1.0, top_k=50)
    a = generate(model, prompt, seed=7, **kwargs)
    b = generate(model, prompt, seed=7, **kwargs)
    c = generate(model, prompt, seed=8, **kwargs)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generation_stops_at_eos(model):
    prompt = torch.tensor([[5, 6, 7]])
    first = int(next(generate_tokens(model, prompt, 1)))
    out = generate(model, prompt, max_new_tokens=10, eos_id=first)
    assert out.tolist() == [[5, 6, 7, first]]


def test_prompt_too_long_for_the_context_is_rejected(model):
    prompt = torch.zeros(1, model.config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(UserError, match="exceeds the model's context"):
        generate(model, prompt, max_new_tokens=1)
