"""Multi-process runs end whole: a failure on any rank ends every rank, and a signal stops all
ranks after the same step, saved once.

Real `python -m src.train trainer=ddp` runs on 2 CPU processes (gloo); Lightning starts rank 1
from rank 0. The ranks write their pids (tests/faults.py), so the test watches rank 1 too.
"""

from __future__ import annotations

import os
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

DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=10000")


def start(tmp: Path, callback: str, *extra: str) -> subprocess.Popen:
    """Two ranks training for 10,000 steps, last.ckpt every 2 steps, with a tests.faults callback."""
    text = write_text(tmp / "input.txt")
    args = fast_overrides(
        tmp,
        text,
        *DDP,
        "checkpoint_every=2",
        f"+callbacks.test._target_=tests.faults.{callback}",
        f"+callbacks.test.pid_dir={tmp / 'pids'}",
        *extra,
    )
    with open(tmp / "stderr.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "src.train", *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=err
        )


def alive(pid: int) -> bool:
    """Running, not a zombie (a container's init may never reap an orphan)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def rank_pids(tmp: Path, proc: subprocess.Popen, timeout: float = 180.0) -> list[int]:
    files = [tmp / "pids" / f"rank{r}.pid" for r in (0, 1)]
    wait_until(lambda: all(f.exists() for f in files), proc, timeout)
    return [int(f.read_text()) for f in files]


def wait_until(condition, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"training exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.05)


def all_gone_within(pids: list[int], proc: subprocess.Popen, seconds: float) -> int:
    """rank 0's exit code, once no rank is left; fails if one outlives `seconds`."""
    deadline = time.monotonic() + seconds
    try:
        code = proc.wait(timeout=seconds)
        while any(alive(pid) for pid in pids):
            assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if alive(pid)]}"
            time.sleep(0.05)
        return code
    finally:
        for pid in pids:  # never leave a hung rank behind on a failed assertion
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("failing_rank", [1, 0])
def test_an_exception_on_one_rank_ends_every_rank_and_keeps_the_last_good_checkpoint(tmp_path, failing_rank):
    proc = start(tmp_path, "FailAt", f"+callbacks.test.rank={failing_rank}", "+callbacks.test.step=3")
    pids = rank_pids(tmp_path, proc)
    failed = tmp_path / "pids" / "failed"
    deadline = time.monotonic() + 300
    while not failed.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert failed.exists(), (tmp_path / "stderr.txt").read_text()[-3000:]

    code = all_gone_within(pids, proc, seconds=60)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert code != 0 and f"injected failure on rank {failing_rank} after step 3" in stderr
    # No save on the way out (it would need the rank that failed); the periodic one at step 2 stays.
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 2
    assert not list(last.parent.glob(".*.tmp-*"))


def test_ranks_that_rank_0_launched_die_with_it_when_it_is_killed_outright(tmp_path):
    """Rank 1 sleeps outside any collective, so nothing but rank 0's death could end it."""
    proc = start(tmp_path, "HangAt", "+callbacks.test.rank=1", "+callbacks.test.step=1")
    pids = rank_pids(tmp_path, proc)
    wait_until((tmp_path / "pids" / "hanging").exists, proc, timeout=300)
    os.kill(pids[0], signal.SIGKILL)  # the OOM killer, or a kill -9
    assert all_gone_within(pids, proc, seconds=10) == -signal.SIGKILL


@pytest.mark.parametrize(
    ("signum", "to_all_ranks", "code"),
    [
        (signal.SIGTERM, False, EXIT_SIGTERM),
        (signal.SIGTERM, True, EXIT_SIGTERM),
        (signal.SIGINT, True, EXIT_SIGINT),
    ],
    ids=["sigterm-to-rank-0", "sigterm-to-all-ranks", "ctrl-c-to-all-ranks"],
)
def test_a_signal_stops_every_rank_after_the_same_step_saved_once(tmp_path, signum, to_all_ranks, code):
    """The ranks agree every log interval (3 steps here), so the saved step is a multiple of 3."""
    proc = start(tmp_path, "RecordPid", "trainer.log_every_n_steps=3")
    pids = rank_pids(tmp_path, proc)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    wait_until(last.exists, proc, timeout=180)  # step 2 is done and saved
    for pid in pids if to_all_ranks else pids[:1]:
        os.kill(pid, signum)

    assert all_gone_within(pids, proc, seconds=120) == code  # rank 0 checks the others exited alike
    stderr = (tmp_path / "stderr.txt").read_text()
    step = read_checkpoint(last)["global_step"]
    assert step >= 3 and step % 3 == 0, stderr[-3000:]
    assert stderr.count(f"{last} holds step {step}; continue with ckpt_path={last}") == 1
    assert "Traceback" not in stderr
