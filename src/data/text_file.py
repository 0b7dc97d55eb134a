"""A local UTF-8 text file (tiny Shakespeare by default), tokenized once and cached."""

from __future__ import annotations

import hashlib
import re
import shutil
import urllib.request
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from src.data.packing import token_dtype, tokenize_documents
from src.errors import UserError
from src.files import atomic_write

# Cut points for batched tokenization: after a lone newline between two non-space
# characters. The byte-level pre-tokenizer always splits there (a longer whitespace run
# would tokenize differently at a chunk's end), so the chunks tokenize to exactly the ids
# of the whole text (a test checks it).
_SAFE_CUT = re.compile(r"(?<=\S\n)(?=\S)")


def download(url: str, path: Path) -> None:
    """Fetch `url` to `path` atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with (
            urllib.request.urlopen(url, timeout=30) as response,
            atomic_write(path, "wb") as f,
        ):
            shutil.copyfileobj(response, f)
    except OSError as err:
        raise UserError(
            f"cannot download {url} to {path} ({err}); put the file there yourself or pass data.path=<file>"
        ) from None


def check_text_file(path: Path, setting: str = "data.path=") -> None:
    """What can be told of a text file without reading it: that it is a file, and not empty.
    `setting` is how the command line names it (`data.path=`), for the hint."""
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass {setting}<a UTF-8 text file>")
    if not path.is_file():
        raise UserError(f"{path}: text file not found; pass {setting}<an existing UTF-8 file>")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: the file is empty; give a file with text in it")


def read_text(path: Path, setting: str = "data.path=") -> str:
    """The file's text, or a one-line error: not a file, empty, or not UTF-8."""
    check_text_file(path, setting)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 (byte {err.start}); convert it with iconv -t utf-8") from None
    if not text.strip():
        raise UserError(f"{path}: the file is empty; give a file with text in it")
    return text


def split_for_tokenization(text: str, chunk_chars: int = 1 << 16) -> list[str]:
    """Chunks of about `chunk_chars` cut only where tokenization is unaffected."""
    chunks, start = [], 0
    while start < len(text):
        end = start + chunk_chars
        match = _SAFE_CUT.search(text, end) if end < len(text) else None
        stop = match.start() if match else len(text)
        chunks.append(text[start:stop])
        start = stop
    return chunks


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16]


def load_tokens(path: Path, tokenizer: PreTrainedTokenizerBase, cache_dir: Path) -> np.ndarray:
    """Token ids of the whole file as one document (EOS at the end), cached on disk.

    The cache key is the file's content and the tokenizer, so editing either re-tokenizes.
    """
    raw = path.read_bytes() if path.is_file() else b""
    key = f"{hashlib.sha256(raw).hexdigest()[:16]}-{tokenizer_fingerprint(tokenizer)}"
    cached = cache_dir / f"{path.stem}-{key}.npy"
    if cached.is_file():
        return np.load(cached, mmap_mode="r")
    text = read_text(path)
    docs = tokenize_documents(tokenizer, split_for_tokenization(text))
    ids = [t for doc in docs for t in doc[:-1]] + [tokenizer.eos_token_id]  # one document, one EOS
    tokens = np.asarray(ids, dtype=token_dtype(len(tokenizer)))
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(cached, "wb") as f:
        np.save(f, tokens)
    return tokens
