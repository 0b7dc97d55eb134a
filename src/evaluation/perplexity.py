"""Token-level perplexity of a model over a text file, with strided sliding windows.

The text is one document: EOS, then its tokens (training puts EOS between documents, so
the first token is predicted as a document start). Every token is scored exactly once.
A window holds at most `window` input tokens and moves by `stride`: each token after the
first window is predicted with at least `window - stride` tokens of context.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from src.data.text_file import read_text
from src.errors import UserError
from src.evaluation.scoring import head_log_probs
from src.models.smollm2 import SmolLM2


@dataclass(frozen=True)
class Perplexity:
    perplexity: float
    tokens: int
    window: int
    stride: int


@torch.no_grad()
def perplexity(model: SmolLM2, ids: list[int], window: int, stride: int) -> Perplexity:
    """exp(mean negative log-likelihood) of ids[1:] (ids[0] starts the document and is not scored)."""
    if window < 1:
        raise UserError(f"window={window}: use a positive number of tokens")
    if not 0 < stride <= window:
        raise UserError(f"stride={stride}, window={window}: use 0 < stride <= window")
    model.config.check_context(window, f"window={window}", "use a smaller window")
    if len(ids) < 2:
        raise UserError("the text has no tokens to score")
    device = model.embed.weight.device
    total, scored = 0.0, 1  # ids[:scored] are done
    while scored < len(ids):
        end = min(scored + stride, len(ids))
        start = max(0, end - 1 - window)
        inputs = torch.tensor([ids[start : end - 1]], device=device)  # (1, T)
        targets = torch.tensor(ids[scored:end], device=device)  # the new tokens only
        hidden = model.hidden_states(inputs)[0, scored - 1 - start :]  # (end - scored, C): the new tokens'
        total -= float(head_log_probs(model, hidden, targets).sum())
        scored = end
    tokens = len(ids) - 1
    return Perplexity(math.exp(total / tokens), tokens, window, stride)


def file_perplexity(
    model: SmolLM2,
    tokenizer: PreTrainedTokenizerBase,
    path: Path,
    window: int | None = None,
    stride: int | None = None,
) -> Perplexity:
    """Perplexity over a UTF-8 text file; by default the window is the model's context (at most
    2,048 tokens) and the stride half of it."""
    text = read_text(path, "text_file=")
    if window is None:
        window = min(model.config.max_position_embeddings, 2048)
    if stride is None:
        stride = max(window // 2, 1)
    ids = [tokenizer.eos_token_id, *tokenizer.encode(text, verbose=False)]
    return perplexity(model, ids, window, stride)
