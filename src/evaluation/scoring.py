"""Multiple-choice scoring by log-likelihood, as lm-evaluation-harness scores `multiple_choice` tasks.

Each choice's log-likelihood is the sum of log p(token) over its tokens given the context.
`acc` picks the choice with the highest sum; `acc_norm` divides each sum by the length of
the choice's text in characters first (not tokens; the delimiter before it not counted),
so long answers are not penalised for having more tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from src.evaluation.tasks import Example
from src.models.smollm2 import SmolLM2


def prefix_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """What an empty context is replaced by: BOS, else EOS (lm-evaluation-harness's `prefix_token_id`)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """Context and continuation ids, split as lm-evaluation-harness splits them.

    The context's trailing whitespace moves to the continuation, the whole text is tokenized
    once, and the continuation is what follows the context's own tokens: its first word keeps
    the leading space it has in running text.
    """
    if not context:
        return [prefix_id(tokenizer)], tokenizer.encode(continuation)
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids) :]


HEAD_ROWS = 2048  # scored tokens per LM-head matmul: (2048, 49152) fp32 logits are 400 MB


@torch.no_grad()
def loglikelihoods(
    model: SmolLM2, pairs: list[tuple[list[int], list[int]]], batch_size: int = 16
) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair.

    Sequences longer than the model's context lose tokens from the left, as in the harness.
    Batches hold sequences of similar length, padded on the right (the causal mask keeps the
    padding out of every real position). The LM head runs only on the positions scored, those
    of a whole batch in one matmul (at most `HEAD_ROWS` at a time): one call per row read the
    49,152 x C head weight from memory for a few tokens each.
    """
    window = model.config.max_position_embeddings
    device = model.embed.weight.device
    sequences = [(context + continuation)[-(window + 1) :] for context, continuation in pairs]
    order = sorted(range(len(pairs)), key=lambda i: -len(sequences[i]))
    results = [0.0] * len(pairs)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(sequences[i]) - 1 for i in batch)
        inputs = torch.zeros(len(batch), width, dtype=torch.long)  # (B, T)
        for row, i in enumerate(batch):
            inputs[row, : len(sequences[i]) - 1] = torch.tensor(sequences[i][:-1])
        hidden = model.hidden_states(inputs.to(device))  # (B, T, C)
        lengths = [len(pairs[i][1]) for i in batch]  # continuation tokens: the positions scored
        ends = [len(sequences[i]) - 1 for i in batch]  # each row's scored positions end before here
        scored = torch.cat([hidden[row, ends[row] - n : ends[row]] for row, n in enumerate(lengths)])
        targets = torch.tensor([t for i in batch for t in pairs[i][1]], device=device)  # (N,)
        logprobs = head_log_probs(model, scored, targets)  # (N,)
        for i, row_logprobs in zip(batch, logprobs.split(lengths), strict=True):
            results[i] = float(row_logprobs.sum())
    return results


def head_log_probs(model: SmolLM2, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """fp32 log p(target) at each of the (N, C) hidden states, through the LM head `HEAD_ROWS`
    rows at a time, so the (N, V) logits never exist whole."""
    parts = []
    for hidden_rows, target_rows in zip(hidden.split(HEAD_ROWS), targets.split(HEAD_ROWS), strict=True):
        logits = model.lm_head(hidden_rows).float()  # (n, V)
        parts.append(logits.log_softmax(-1).gather(-1, target_rows[:, None]).squeeze(1))
    return torch.cat(parts)


@dataclass(frozen=True)
class Scores:
    """One task's result: accuracies over `n` questions."""

    acc: float
    acc_norm: float
    n: int


def choice_loglikelihoods(
    model: SmolLM2, tokenizer: PreTrainedTokenizerBase, examples: list[Example], batch_size: int = 16
) -> list[list[float]]:
    """Each example's choices' log-likelihoods, all questions' requests batched together."""
    pairs = [encode_pair(tokenizer, c, x) for example in examples for c, x in example.requests()]
    flat = loglikelihoods(model, pairs, batch_size)
    out, at = [], 0
    for example in examples:
        out.append(flat[at : at + len(example.choices)])
        at += len(example.choices)
    return out


def accuracies(examples: list[Example], lls: list[list[float]]) -> Scores:
    """`acc` and `acc_norm` from the choices' log-likelihoods (ties go to the first choice)."""
    hits, norm_hits = 0, 0
    for example, scores in zip(examples, lls, strict=True):
        lengths = np.array([float(len(choice)) for choice in example.choices])
        hits += int(np.argmax(scores)) == example.gold
        norm_hits += int(np.argmax(np.array(scores) / lengths)) == example.gold
    return Scores(acc=hits / len(examples), acc_norm=norm_hits / len(examples), n=len(examples))


def score(
    model: SmolLM2, tokenizer: PreTrainedTokenizerBase, examples: list[Example], batch_size: int = 16
) -> Scores:
    """Zero-shot `acc` and `acc_norm` of `model` on `examples`; the model should be in eval mode."""
    return accuracies(examples, choice_loglikelihoods(model, tokenizer, examples, batch_size))
