"""Multiple-choice scoring: the harness's token split, log-likelihoods against a direct forward."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from src.data.tokenizer import load_tokenizer
from src.evaluation import scoring
from src.evaluation.scoring import accuracies, choice_loglikelihoods, encode_pair, loglikelihoods, score
from src.evaluation.tasks import Example, read_local
from src.models import SmolLM2, SmolLM2Config
from tests.helpers import write_questions


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def tiny_model(**overrides) -> SmolLM2:
    torch.manual_seed(0)
    return SmolLM2(dataclasses.replace(SmolLM2Config.from_preset("tiny"), **overrides)).eval()


def direct_loglikelihood(model: SmolLM2, context: list[int], continuation: list[int]) -> float:
    """One forward over context + continuation; the continuation's log-probabilities summed."""
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logprobs = model(ids[:, :-1])[0].log_softmax(-1)  # (T - 1, V)
    return sum(float(logprobs[len(context) - 1 + k, token]) for k, token in enumerate(continuation))


def test_the_contexts_trailing_space_moves_to_the_continuation(tokenizer):
    context, continuation = encode_pair(tokenizer, "The king said ", "farewell")
    assert context == tokenizer.encode("The king said")
    assert context + continuation == tokenizer.encode("The king said farewell")
    assert tokenizer.decode(continuation) == " farewell"


def test_an_empty_context_is_the_prefix_token(tokenizer):
    assert encode_pair(tokenizer, "", " farewell") == (
        [tokenizer.eos_token_id],
        tokenizer.encode(" farewell"),
    )


@pytest.mark.parametrize("head_rows", [scoring.HEAD_ROWS, 3])
def test_batched_loglikelihoods_equal_one_forward_per_pair(tokenizer, head_rows, monkeypatch):
    """Padded batches of unequal lengths; the head over a batch's scored tokens, also in
    chunks that split a continuation (5 of its tokens in a batch with 1 more)."""
    monkeypatch.setattr(scoring, "HEAD_ROWS", head_rows)
    model = tiny_model()
    texts = [("The king", " said"), ("A man of good heart will go", " to war and come home"), ("Go", " home")]
    pairs = [encode_pair(tokenizer, c, x) for c, x in texts]
    batched = loglikelihoods(model, pairs, batch_size=2)
    expected = [direct_loglikelihood(model, c, x) for c, x in pairs]
    assert batched == pytest.approx(expected, abs=1e-4)


def test_a_sequence_longer_than_the_context_loses_tokens_from_the_left():
    model = tiny_model(max_position_embeddings=8)
    context, continuation = list(range(100, 110)), [7, 8, 9]  # 13 tokens, 9 kept
    [got] = loglikelihoods(model, [(context, continuation)])
    assert got == pytest.approx(direct_loglikelihood(model, context[-6:], continuation), abs=1e-5)


def test_acc_norm_divides_by_the_choices_length_in_characters():
    example = Example("Q", ("a", "a longer answer"), gold=1)  # 1 and 15 characters
    scores = accuracies([example], [[-2.0, -6.0]])
    assert (scores.acc, scores.acc_norm) == (0.0, 1.0)  # -2/1 < -6/15


def test_score_is_the_argmax_of_direct_loglikelihoods(tokenizer, tmp_path):
    model = tiny_model()
    examples = read_local(write_questions(tmp_path / "q.jsonl", count=10))
    direct = [
        [direct_loglikelihood(model, *encode_pair(tokenizer, c, x)) for c, x in example.requests()]
        for example in examples
    ]
    acc = np.mean([np.argmax(lls) == e.gold for lls, e in zip(direct, examples, strict=True)])
    norm = [np.array(lls) / [len(c) for c in e.choices] for lls, e in zip(direct, examples, strict=True)]
    acc_norm = np.mean([np.argmax(n) == e.gold for n, e in zip(norm, examples, strict=True)])
    batched = choice_loglikelihoods(model, tokenizer, examples, batch_size=3)
    assert np.concatenate(batched) == pytest.approx(np.concatenate(direct), abs=1e-4)
    assert score(model, tokenizer, examples) == score(model, tokenizer, examples, batch_size=1)
    got = score(model, tokenizer, examples)
    assert (got.acc, got.acc_norm, got.n) == (pytest.approx(acc), pytest.approx(acc_norm), 10)


def test_a_partial_scoring_example_scores_one_continuation_after_each_choice():
    example = Example(
        "The trophy does not fit in the suitcase because _ is big.",
        ("The trophy", "The suitcase"),
        0,
        "is big.",
    )
    assert example.requests() == [("The trophy", " is big."), ("The suitcase", " is big.")]
