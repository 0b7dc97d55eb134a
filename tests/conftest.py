"""Shared fixtures: the tiny model config, tiny Shakespeare from ../shared, a Llama twin."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

# Under pytest-xdist each worker (and the commands its tests start) gets its share of the cores:
# torch's default of one thread per core in every worker would oversubscribe them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

import torch  # noqa: E402  (after the thread count is set)

# A shell starts a background job (`make test &`, nohup) with Ctrl-C ignored, and every process
# it starts inherits that: the tests that send SIGINT would see it ignored. A handler is reset to
# the default in the commands the tests start, where an ignored signal would stay ignored.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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
