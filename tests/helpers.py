"""Helpers several test modules share: a tiny checkpoint on disk and a CLI runner."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from src.models import SmolLM2, SmolLM2Config
from src.training import checkpoint as ckpt
from tests.conftest import REPO_ROOT
from tests.forked_cli import Server


def write_checkpoint(model: SmolLM2, path: Path) -> None:
    """What our LightningModule puts in a .ckpt, minus the loop state that inference does not need."""
    state = {ckpt.MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    torch.save({ckpt.MODEL_CONFIG: model.config.to_dict(), ckpt.TOKENIZER: None, "state_dict": state}, path)


def tiny_checkpoint(path: Path) -> SmolLM2:
    """A seeded, untrained tiny model in eval mode, written as a checkpoint at `path`."""
    torch.manual_seed(0)
    model = SmolLM2(SmolLM2Config.from_preset("tiny")).eval()
    write_checkpoint(model, path)
    return model


_server: Server | None = None


def run_cli(module: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root, as a user would type it (forked from
    a process that imported torch and Lightning already: tests/forked_cli.py). With CUDA, a plain
    process: GPU time is too rare to risk on how a fork meets CUDA."""
    global _server
    if torch.cuda.is_available():
        command = [sys.executable, "-m", module, *args]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)
    if _server is None or not _server.serves():
        if _server is not None:
            _server.close()
        _server = Server()  # with this test's environment
    return _server.run(module, list(args), REPO_ROOT, timeout)


# Runs a module as `python -m` does, then prints on its last stderr line which slow imports it made.
REPORT_IMPORTS = (
    "import atexit, runpy, sys; "
    "slow = ('torch', 'lightning'); "
    "atexit.register(lambda: print(*[m for m in slow if m in sys.modules], file=sys.stderr)); "
    "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)"
)


def run_plain(
    module: str, *args: str, cwd: Path = REPO_ROOT, timeout: float = 120
) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`python -m module args...` in a fresh process (run_cli's fork has imported everything
    already), and which of torch and Lightning it imported."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", REPORT_IMPORTS, module, *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    *lines, imported = result.stderr.splitlines() or [""]
    result.stderr = "\n".join(lines)
    return result, set(imported.split())


def write_questions(path: Path, count: int = 12, seed: int = 0) -> Path:
    """A local multiple-choice task file (`tasks=local:<path>`): choices of different lengths."""
    import json
    import random

    rng = random.Random(seed)
    words = "the king said that a man of good heart will go to war and come home with honour".split()
    with path.open("w") as f:
        for _ in range(count):
            choices = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(4)]
            query = " ".join(rng.choice(words) for _ in range(8)).capitalize()
            f.write(json.dumps({"query": query, "choices": choices, "gold": rng.randrange(4)}) + "\n")
    return path


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """`<run_dir>/csv/metrics.csv` as the CSV logger writes it: one column per key any row has."""
    (run_dir / "csv").mkdir(parents=True)
    columns = sorted({key for row in rows for key in row})
    with open(run_dir / "csv" / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(checkpoint: Path, log: Path, timeout: float = 40.0) -> tuple[subprocess.Popen, int]:
    """`python -m src.app` serving `checkpoint` on a free port, its output in `log`, once it listens."""
    port = free_port()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.app", f"ckpt_path={checkpoint}", f"port={port}"],
            cwd=REPO_ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with {process.returncode}:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail(f"the app did not listen on port {port} within {timeout:.0f} s:\n{log.read_text()}")
