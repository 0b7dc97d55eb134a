"""The one tokenize-and-pack path every data source uses.

Documents are tokenized in batches, each followed by EOS, concatenated, and cut into
windows of `seq_len + 1` tokens with a stride of `seq_len`: consecutive windows share
one token, so every token after the first is a prediction target exactly once and no
position is padding.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
from transformers import PreTrainedTokenizerBase


def tokenize_documents(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Batched fast tokenization; EOS closes every document."""
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return [doc + [tokenizer.eos_token_id] for doc in ids]


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def num_windows(num_tokens: int, seq_len: int) -> int:
    """How many `seq_len + 1` windows with stride `seq_len` fit in `num_tokens` tokens."""
    return max(0, (num_tokens - 1) // seq_len)


class WindowPacker:
    """Turns a stream of token lists into `seq_len + 1` windows, carrying the remainder.

    Its state (the tokens not yet emitted) is a plain list, so a resumable source can save it.
    """

    def __init__(self, seq_len: int, remainder: list[int] | None = None) -> None:
        self.seq_len = seq_len
        self.buffer: list[int] = list(remainder or [])

    def feed(self, docs: Iterable[list[int]]) -> Iterator[list[int]]:
        """Windows as soon as they are complete; while one is out, `buffer` is exactly what follows it."""
        for doc in docs:
            self.buffer.extend(doc)
            while len(self.buffer) >= self.seq_len + 1:
                window = self.buffer[: self.seq_len + 1]
                del self.buffer[: self.seq_len]  # the window's last token starts the next one
                yield window
