"""Kills and signals: a run stopped at any moment continues from last.ckpt, losing only unsaved steps.

Real `python -m src.train` processes, with last.ckpt written after every step so a kill
often lands in the middle of a checkpoint write.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.errors import EXIT_SIGINT, EXIT_SIGTERM
from src.training.checkpoint import read_checkpoint
from tests.conftest import REPO_ROOT
from tests.training import fast_overrides, write_text

pytestmark = pytest.mark.slow


def start(tmp: Path, *extra: str) -> subprocess.Popen:
    """A training run that would go on for 10,000 steps, saving last.ckpt after each one."""
    text = tmp / "input.txt"
    if not text.exists():
        write_text(text)
    every_step = "callbacks.last_checkpoint.every_n_train_steps=1"
    args = fast_overrides(tmp, text, "trainer.max_steps=10000", every_step)
    with open(tmp / "stderr.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "src.train", *args, *extra],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def saved_step(last: Path) -> int:
    return read_checkpoint(last)["global_step"] if last.exists() else 0


def wait_for(condition, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.002)


def temp_files(last: Path) -> list[Path]:
    return list(last.parent.glob(".*.tmp-*"))


def resume_to_the_end(tmp: Path, last: Path, steps: int) -> None:
    """A continuation to `steps` more steps finishes normally and leaves no temp files."""
    step = saved_step(last)
    proc = start(tmp, f"ckpt_path={last}", f"trainer.max_steps={step + steps}")
    assert proc.wait(timeout=300) == 0, (tmp / "stderr.txt").read_text()
    assert saved_step(last) == step + steps and not temp_files(last)


def test_sigkill_at_any_moment_leaves_a_checkpoint_to_continue_from(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    rng = random.Random(0)
    step = 0
    # The middle of a checkpoint write, then a random moment.
    for mid_write in (True, False):
        proc = start(tmp_path, *([f"ckpt_path={last}"] if last.exists() else []))
        wait_for(lambda: saved_step(last) > step, proc)  # noqa: B023
        if mid_write:
            wait_for(lambda: temp_files(last), proc)
        else:
            time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        # The newest complete checkpoint loads; at most the steps after it are lost.
        assert saved_step(last) > step
        step = saved_step(last)
        if mid_write:
            assert temp_files(last), "the kill was meant to land inside a checkpoint write"
    resume_to_the_end(tmp_path, last, steps=2)


def test_sigterm_and_ctrl_c_save_and_exit_with_their_code(tmp_path):
    """SIGTERM (a scheduler's notice) exits 143, Ctrl-C 130, each after saving last.ckpt."""
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    for signum, code in [(signal.SIGTERM, EXIT_SIGTERM), (signal.SIGINT, EXIT_SIGINT)]:
        step = saved_step(last)
        proc = start(tmp_path, *([f"ckpt_path={last}"] if last.exists() else []))
        wait_for(lambda: saved_step(last) >= step + 2, proc)  # noqa: B023
        proc.send_signal(signum)
        assert proc.wait(timeout=120) == code
        stderr = (tmp_path / "stderr.txt").read_text()
        assert f"{last} holds step {saved_step(last)}; continue with ckpt_path={last}" in stderr
        assert "Traceback" not in stderr and saved_step(last) >= step + 2
    resume_to_the_end(tmp_path, last, steps=1)
