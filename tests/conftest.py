"""Shared fixtures: the tiny model config, tiny Shakespeare from ../shared, a Llama twin."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

# Under pytest-xdist each worker (and the commands its tests start) gets its share of the cores:
# torch's default of one thread per core in every worker would oversubscribe them.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // WORKERS)))

# Inductor sets this variable to its default folder the first time it looks: read it before.
USER_INDUCTOR_CACHE = os.environ.get("TORCHINDUCTOR_CACHE_DIR")

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
def _session_caches(tmp_path_factory) -> None:
    """Kernel timings and compiled kernels of the test runs (and their subprocesses) go to the
    session's temporary folder, removed with it, not to the user's caches: Inductor's cache in
    /tmp grows by its compiled code on every change of the model."""
    os.environ["SMOLLM2_CACHE_DIR"] = str(tmp_path_factory.mktemp("smollm2_cache"))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = USER_INDUCTOR_CACHE or str(
        tmp_path_factory.mktemp("inductor_cache")
    )


@pytest.fixture(scope="module")
def module_tmp_path(tmp_path_factory, request) -> Iterator[Path]:
    """A folder for one test module's shared files, removed when the module ends. Runs and
    checkpoints of the tiny model take tens of MB each; kept to the session's end they added up
    to gigabytes, more than a CI machine's disk had free."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


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
