"""Perplexity with sliding windows: every token scored once, each window equal to a direct forward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from src.errors import UserError
from src.evaluation.perplexity import perplexity
from src.models import SmolLM2, SmolLM2Config


@pytest.fixture(scope="module")
def model() -> SmolLM2:
    torch.manual_seed(0)
    return SmolLM2(SmolLM2Config.from_preset("tiny")).eval()


def summed_nll(model: SmolLM2, ids: list[int]) -> float:
    """-log p(ids[1:] | ids[:-1]) in one forward."""
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]]))[0]
    return float(F.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))


IDS = [0, *range(200, 240)]  # a document start and 40 tokens


def test_one_window_over_the_whole_text_is_one_forward(model):
    result = perplexity(model, IDS, window=64, stride=64)
    assert result.tokens == 40
    assert result.perplexity == pytest.approx(math.exp(summed_nll(model, IDS) / 40), rel=1e-5)


def test_disjoint_windows_score_each_chunk_on_its_own(model):
    chunks = [IDS[i : i + 11] for i in range(0, 40, 10)]  # inputs of 10 tokens, each predicting the next 10
    expected = sum(summed_nll(model, chunk) for chunk in chunks)
    result = perplexity(model, IDS, window=10, stride=10)
    assert result.perplexity == pytest.approx(math.exp(expected / 40), rel=1e-5)


def test_overlapping_windows_give_every_token_more_context(model):
    strided = perplexity(model, IDS, window=10, stride=5)
    assert strided.tokens == 40 and math.isfinite(strided.perplexity)
    with pytest.raises(UserError, match="0 < stride <= window"):
        perplexity(model, IDS, window=10, stride=11)
