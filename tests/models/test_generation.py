import pytest
import torch
from torch._dynamo.utils import counters

from src.errors import UserError
from src.models import SmolLM2, SmolLM2Config, generate, generate_tokens, generation
from src.models.generation import cache_length, sample_next


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


def test_n_new_tokens_take_n_forward_passes_the_prefill_included(model):
    calls = []
    hook = model.lm_head.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = generate(model, torch.tensor([[5, 6, 7]]), max_new_tokens=4)
    finally:
        hook.remove()
    assert out.shape == (1, 7) and len(calls) == 4


def test_prompt_too_long_for_the_context_is_rejected(model):
    prompt = torch.zeros(1, model.config.max_position_embeddings, dtype=torch.long)
    with pytest.raises(UserError, match="exceeds the model's context"):
        generate(model, prompt, max_new_tokens=1)


def host_position_tokens(model: SmolLM2, prompt: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy decoding as it was before device positions: each step attends to the S cached keys."""
    cache = model.new_kv_cache(prompt.shape[0], prompt.shape[1] + n)
    with torch.no_grad():
        logits = model(prompt, cache, 0)[:, -1]
        tokens = []
        for position in range(prompt.shape[1], prompt.shape[1] + n):
            tokens.append(logits.argmax(-1))
            logits = model(tokens[-1][:, None], cache, position)[:, -1]
    return torch.cat([prompt, torch.stack(tokens, dim=1)], dim=1)


def test_decoding_at_device_positions_gives_the_tokens_of_host_positions(monkeypatch):
    torch.manual_seed(0)
    config = SmolLM2Config(hidden_size=576, intermediate_size=1536, num_layers=2, num_heads=9, num_kv_heads=3)
    model = SmolLM2(config).eval()
    prompt = torch.randint(0, config.vocab_size, (2, 7))
    host = generate(model, prompt, 24)
    assert torch.equal(host, host_position_tokens(model, prompt, 24))
    # The compiled path's steps, run eagerly: device positions over the whole cache.
    monkeypatch.setattr(generation, "compiled_step", lambda device_type: generation._last_logits)
    assert torch.equal(generate(model, prompt, 24, compile_steps=True), host)


def test_a_step_at_a_device_position_sees_only_the_cache_written_so_far(model):
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    exact, padded = model.new_kv_cache(2, 12), model.new_kv_cache(2, 64)
    with torch.no_grad():
        model(x[:, :11], exact, 0), model(x[:, :11], padded, 0)
        padded.layers[0].keys[:, :, 12:] = 1e4  # garbage beyond the position must not leak in
        expected = model(x[:, 11:], exact, 11)
        got = model(x[:, 11:], padded, torch.tensor([11]))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("total", "context", "compiled", "expected"),
    [
        (30, 8192, False, 30),
        (30, 8192, True, 256),
        (300, 8192, True, 512),
        (5000, 8192, True, 8192),
        (300, 300, True, 300),
    ],
)
def test_a_compiled_step_gets_a_cache_of_few_distinct_lengths(total, context, compiled, expected):
    assert cache_length(total, context, compiled) == expected


def test_compiled_steps_decode_the_same_tokens_and_compile_once(model):
    torch._dynamo.reset()
    counters.clear()
    for length, sampling in [(7, {}), (9, dict(temperature=0.9, top_k=20, seed=3))]:
        prompt = torch.randint(0, model.config.vocab_size, (2, length))
        expected = generate(model, prompt, 12, **sampling)
        assert torch.equal(generate(model, prompt, 12, compile_steps=True, **sampling), expected)
    # One graph, no breaks: every position and both prompts (new caches) reuse it.
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decoding_gives_the_eager_tokens_without_a_host_sync(dtype):
    torch.manual_seed(0)
    model = SmolLM2(SmolLM2Config.from_preset("tiny")).to("cuda", dtype).eval()
    prompt = torch.randint(0, model.config.vocab_size, (2, 7), device="cuda")
    counters.clear()
    for sampling in [{}, dict(temperature=0.9, top_k=20, seed=3)]:
        compiled = generate(model, prompt, 24, **sampling)  # compiled steps: the default on CUDA
        if dtype == torch.float32:  # bf16 roundings may differ once inductor fuses the ops
            assert torch.equal(compiled, generate(model, prompt, 24, compile_steps=False, **sampling))
        steps = generate_tokens(model, prompt, 24, **sampling)
        next(steps)  # the prefill
        torch.cuda.set_sync_debug_mode("error")  # no EOS, so no stop check: nothing may sync
        try:
            assert len(list(steps)) == 23
        finally:
            torch.cuda.set_sync_debug_mode(0)
    assert not counters["inductor"]["cudagraph_skips"]  # the steps ran as CUDA graphs
