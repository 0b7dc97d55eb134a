"""Autoregressive sampling with a KV cache: greedy, temperature, top-k, top-p, EOS stop.

The prompt is prefilled once, eagerly (its length varies). Each later step feeds one token.
Compiled, it runs at a position held in a device tensor, against the whole preallocated
cache: the step has the same shapes and reads nothing back at every position, so it is
compiled once and, on CUDA, replayed as a CUDA graph (`torch.compile(mode="reduce-overhead")`).
Eager, it runs at a host position against the keys written so far, without a mask: less
work per token, and no host sync either. The only host read per token is the EOS stop check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch

from src.errors import UserError
from src.models.kv_cache import KVCache
from src.models.smollm2 import SmolLM2


def sample_next(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row of logits (B, V); temperature 0 means greedy. Returns (B,)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0 < top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token once the tokens ranked above it already cover top_p; the first always stays.
        drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)


def check_generation_fits(model: SmolLM2, prompt_tokens: int, max_new_tokens: int) -> None:
    """Prompt and new tokens must fit the context window, checked before any text is produced."""
    model.config.check_context(
        prompt_tokens + max_new_tokens,
        f"prompt ({prompt_tokens} tokens) + max_new_tokens ({max_new_tokens})",
        "shorten the prompt or lower max_new_tokens",
    )


def _last_logits(
    model: SmolLM2, ids: torch.Tensor, cache: KVCache, start: int | torch.Tensor
) -> torch.Tensor:
    """Logits (B, V) of the last position only: the prompt's other rows never need the head."""
    return model.lm_head(model.hidden_states(ids, cache, start)[:, -1])


@functools.cache
def compiled_step(device_type: str) -> Callable[[SmolLM2, torch.Tensor, KVCache, torch.Tensor], torch.Tensor]:
    """The one-token step, compiled once per process; with CUDA graphs on CUDA."""
    mode = "reduce-overhead" if device_type == "cuda" else None
    return torch.compile(_last_logits, mode=mode, fullgraph=True)


def cache_length(total: int, context: int, compiled: bool) -> int:
    """Positions to allocate for `total` tokens: exactly those, or for a compiled step a power
    of two from 256 up (within the context), so that few cache shapes ever get compiled."""
    if not compiled:
        return total
    return min(max(256, 1 << (total - 1).bit_length()), context)


@torch.inference_mode()
def generate_tokens(
    model: SmolLM2,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    compile_steps: bool | None = None,
) -> Iterator[torch.Tensor]:
    """Yield the next token ids (B,) one step at a time, prefilling the prompt (B, T) once.

    Rows that have produced `eos_id` keep yielding it; iteration ends when every row has
    stopped or after `max_new_tokens` steps. `compile_steps`: run the one-token steps
    through `compiled_step`; by default on CUDA only (compiling costs seconds, which a
    CPU's decoding does not win back).
    """
    B, T = input_ids.shape
    if T == 0:
        raise UserError("the prompt is empty: give at least one token")
    check_generation_fits(model, T, max_new_tokens)
    device = input_ids.device
    if compile_steps is None:
        compile_steps = device.type == "cuda"
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    context = model.config.max_position_embeddings
    cache = model.new_kv_cache(B, cache_length(T + max_new_tokens, context, compile_steps))
    step = _last_logits
    if compile_steps:
        step = compiled_step(device.type)
        for layer in cache.layers:  # CUDA graphs write into the cache where it is, not into a copy
            torch._dynamo.mark_static_address(layer.keys)
            torch._dynamo.mark_static_address(layer.values)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    logits = _last_logits(model, input_ids, cache, 0)  # (B, V)
    # Where the next token goes: on the device for compiled steps (one shape for every step,
    # no host sync), else on the host, so that each step reads only the cache written so far.
    position = torch.full((1,), T, device=device) if compile_steps else T
    for remaining in range(max_new_tokens - 1, -1, -1):
        token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_id is not None:
            token = token.masked_fill(finished, eos_id)
            finished |= token == eos_id
        yield token
        if remaining == 0 or (eos_id is not None and bool(finished.all())):
            return  # no forward pass for a token after the last
        if compile_steps:
            torch.compiler.cudagraph_mark_step_begin()  # this step's logits replace the last's
        logits = step(model, token[:, None], cache, position)
        position += 1


def generate(model: SmolLM2, input_ids: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
    """Prompt (B, T) -> prompt plus new tokens (B, T + n), n <= max_new_tokens."""
    new = list(generate_tokens(model, input_ids, max_new_tokens, **kwargs))
    if not new:
        return input_ids
    return torch.cat([input_ids, torch.stack(new, dim=1)], dim=1)
