"""SIGTERM and Ctrl-C exit 143 and 130 in every phase of a run, with `last.ckpt` holding the
last finished step whenever one finished since the last save (none before step 1).

`python -m src.train` commands (tests/forked_cli.py); `tests.faults.SignalIn` sends the signal
from inside the phase, so each case is deterministic. Steps 2 and 4 validate and sample; step 4
saves.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from src.errors import EXIT_SIGINT, EXIT_SIGTERM
from src.training.checkpoint import read_checkpoint
from tests.helpers import run_cli
from tests.training import fast_overrides, write_text

pytestmark = pytest.mark.slow

CODES = {"SIGTERM": EXIT_SIGTERM, "SIGINT": EXIT_SIGINT}


def run_signalled(tmp: Path, phase: str, signal: str, step: int, *extra: str) -> subprocess.CompletedProcess:
    """A 6-step run that receives `signal` in `phase` at `step` (so it should never reach step 6)."""
    args = fast_overrides(
        tmp,
        write_text(tmp / "input.txt"),
        "trainer.max_steps=6",
        "kernels=[]",
        "eval_every=2",
        "checkpoint_every=4",
        "callbacks.text_samples.every_n_steps=2",
        "+callbacks.test._target_=tests.faults.SignalIn",
        f"+callbacks.test.phase={phase}",
        f"+callbacks.test.signal={signal}",
        f"+callbacks.test.step={step}",
        *extra,
    )
    return run_cli("src.train", *args)


@pytest.mark.parametrize(
    ("phase", "signal", "step", "saved"),
    [
        ("tokenizing", "SIGTERM", 0, None),
        ("validation_at_start", "SIGTERM", 0, None),
        ("validation_at_start", "SIGINT", 0, None),
        ("training", "SIGTERM", 2, 3),  # the step under way is finished first
        ("validation", "SIGTERM", 2, 2),
        ("sampling", "SIGTERM", 2, 2),
        ("checkpoint", "SIGTERM", 4, 4),  # last.ckpt's write is finished, then the run stops
        ("checkpoint", "SIGINT", 4, 4),
    ],
)
def test_a_signal_in_any_phase_exits_with_its_code_and_saves_what_a_step_finished(
    tmp_path, phase, signal, step, saved
):
    proc = run_signalled(tmp_path, phase, signal, step)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert proc.returncode == CODES[signal], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    if saved is None:
        assert "nothing saved" in proc.stderr and not last.exists()
    else:
        assert f"{last} holds step {saved}; continue with ckpt_path={last}" in proc.stderr
        assert read_checkpoint(last)["global_step"] == saved
    assert not list(last.parent.glob(".*.tmp-*"))


def test_a_continuation_after_ctrl_c_inside_a_step_validates_and_logs_at_the_steps_of_an_unstopped_run(
    tmp_path,
):
    """Ctrl-C lands in step 3's update, so the loop has counted that step's batch; last.ckpt
    holds step 2, and its continuation must validate at steps 4 and 6 (eval_every=2) with the
    losses of a run never stopped, not one batch early."""
    for name in ("stopped", "whole"):
        (tmp_path / name).mkdir()
    stopped = run_signalled(tmp_path / "stopped", "training", "SIGINT", 2, "trainer.limit_val_batches=1")
    assert stopped.returncode == EXIT_SIGINT, stopped.stderr[-3000:]
    last = tmp_path / "stopped" / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 2
    continued = run_signalled(
        tmp_path / "stopped", "training", "SIGINT", 99, "trainer.limit_val_batches=1", f"ckpt_path={last}"
    )  # the same callbacks, its signal never sent
    assert continued.returncode == 0, continued.stderr[-3000:]
    whole = run_signalled(tmp_path / "whole", "training", "SIGINT", 99, "trainer.limit_val_batches=1")
    assert whole.returncode == 0, whole.stderr[-3000:]

    def validations(run: Path) -> dict[str, float]:
        return json.loads((run / "run" / "summary.json").read_text())["val/loss_by_step"]

    def logged_steps(run: Path, key: str) -> list[str]:
        with open(run / "run" / "csv" / "metrics.csv", newline="") as f:
            return [row["step"] for row in csv.DictReader(f) if row.get(key)]

    assert list(validations(tmp_path / "stopped")) == ["0", "2", "4", "6"]
    assert validations(tmp_path / "stopped") == validations(tmp_path / "whole")
    for key in ("val/loss", "train/loss"):
        assert logged_steps(tmp_path / "stopped", key) == logged_steps(tmp_path / "whole", key)
