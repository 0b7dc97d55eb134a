"""Shared fixtures: the tiny model config, tiny Shakespeare from ../shared, a Llama twin."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = Path(
    os.environ.get("TINYSHAKESPEARE", REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")
)


@pytest.fixture(autouse=True, scope="session")
def _kernel_timings_cache(tmp_path_factory) -> None:
    """Kernel timings of the test runs (and their subprocesses) go to a temporary folder, not
    the user's cache."""
    os.environ["SMOLLM2_CACHE_DIR"] = str(tmp_path_factory.mktemp("smollm2_cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    if not SHAKESPEARE.is_file():
        pytest.skip(f"tiny Shakespeare not found at {SHAKESPEARE}; set TINYSHAKESPEARE=<path to input.txt>")
    return SHAKESPEARE


@pytest.fixture(scope="session")
def tokenizer():
    from src.data.tokenizer import load_tokenizer

    return load_tokenizer()
