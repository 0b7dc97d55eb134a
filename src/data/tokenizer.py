"""The SmolLM2 tokenizer, vendored in `src/assets/`, or any Hugging Face tokenizer by path or id."""

from __future__ import annotations

import functools
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from src.errors import UserError, first_line

DEFAULT_TOKENIZER = str(Path(__file__).resolve().parents[1] / "assets" / "smollm2-tokenizer")


@functools.lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str | None = None) -> PreTrainedTokenizerBase:
    """A fast tokenizer; `None` means the vendored SmolLM2 (cosmo2) tokenizer.

    Loaded once per name and shared (config checks, the DataModule's prepare/setup and the
    sampling callback all ask for it), so callers must not modify it.
    """
    name_or_path = name_or_path or DEFAULT_TOKENIZER
    if looks_like_a_path(name_or_path) and not Path(name_or_path).is_dir():
        raise UserError(f"tokenizer {name_or_path!r}: no such folder; give a tokenizer folder or a hub id")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot load tokenizer {name_or_path!r} ({first_line(err)}); "
            "give a local folder or a reachable hub id"
        ) from None
    if not tokenizer.is_fast:
        raise UserError(f"tokenizer {name_or_path!r} is not a fast tokenizer; batched tokenization needs one")
    if tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {name_or_path!r} has no EOS token to separate documents")
    return tokenizer


def looks_like_a_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else can only mean a local folder."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
