"""A continuation after a crash between checkpoints logs each step once: the CSV sets the crashed
process's later rows aside, W&B is asked to rewind to the checkpoint, and the summary ignores them."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import wandb

from src.tracking.csv_logger import set_aside_rows_after
from src.tracking.wandb_logger import RunWandbLogger
from tests.helpers import run_cli
from tests.training import fast_overrides, read_metrics, write_text

FIELDS = ["epoch", "step", "train/loss", "val/loss"]


def write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def test_rows_after_the_checkpoint_step_move_to_a_side_file(tmp_path):
    metrics = tmp_path / "metrics.csv"
    rows = [{"epoch": "0", "step": str(s), "train/loss": str(10 - s), "val/loss": ""} for s in range(6)]
    rows.insert(3, {"epoch": "0", "step": "1", "train/loss": "", "val/loss": "9.5"})
    write_csv(metrics, rows)

    side = set_aside_rows_after(metrics, 3)
    with metrics.open(newline="") as f:
        kept = list(csv.DictReader(f))
    with side.open(newline="") as f:
        moved = list(csv.DictReader(f))
    assert kept == [row for row in rows if int(row["step"]) <= 3]
    assert moved == [row for row in rows if int(row["step"]) > 3]
    assert side.name.startswith("metrics.rolled_back_") and side.parent == tmp_path
    assert set_aside_rows_after(metrics, 3) is None  # nothing left to move: no second side file
    assert len(list(tmp_path.iterdir())) == 2


def test_a_full_disk_while_rewriting_the_csv_leaves_it_whole_and_no_temporary(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.csv"
    write_csv(metrics, [{"epoch": "0", "step": str(s), "train/loss": "1", "val/loss": ""} for s in range(6)])
    before = metrics.read_text()
    calls = []

    def full_disk_on_the_second_file(writer, rows):
        calls.append(rows)
        if len(calls) == 2:  # the side file is written first, then the kept rows
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(writer, rows)

    original = csv.DictWriter.writerows
    monkeypatch.setattr(csv.DictWriter, "writerows", full_disk_on_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        set_aside_rows_after(metrics, 3)
    assert metrics.read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def init_kwargs(
    monkeypatch, tmp_path, mode: str, reject_rewind: bool = False, no_server: bool = False
) -> list[dict]:
    calls: list[dict] = []

    def fake_init(**kwargs):
        calls.append(dict(kwargs))
        if reject_rewind and "resume_from" in kwargs:
            raise wandb.errors.CommError("failed to rewind run: rewind is not enabled")
        if no_server and kwargs["mode"] == "online":
            raise wandb.errors.CommError("context deadline exceeded")
        return object()

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "teardown", lambda: None)
    logger = RunWandbLogger(save_dir=str(tmp_path), mode=mode, id="abcd1234")
    logger.continue_at(7)
    _ = logger.experiment
    return calls


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_a_continuation_asks_wandb_to_rewind_to_the_checkpoint(tmp_path, monkeypatch, mode):
    """Step 7's checkpoint holds what was logged at steps 0..7 (every row at its optimizer step)."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    (call,) = init_kwargs(monkeypatch, tmp_path, mode)
    assert call["resume_from"] == "abcd1234?_step=7" and "resume" not in call
    assert call["id"] == "abcd1234" and call["mode"] == mode


def test_a_server_without_rewind_gets_a_plain_resume(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    messages: list[str] = []
    monkeypatch.setattr("src.tracking.wandb_logger.rank_zero_info", messages.append)
    rewind, plain = init_kwargs(monkeypatch, tmp_path, "online", reject_rewind=True)
    assert rewind["resume_from"] == "abcd1234?_step=7"
    assert "resume_from" not in plain and plain["resume"] == "allow" and plain["mode"] == "online"
    assert len(messages) == 1 and "did not rewind" in messages[0]


@pytest.mark.slow
def test_a_run_killed_between_checkpoints_and_continued_logs_each_step_once(tmp_path):
    """Checkpoints at 3 and 6; kill -9 as step 6 starts (steps 4 and 5 logged, not saved)."""
    text = write_text(tmp_path / "input.txt")
    args = fast_overrides(tmp_path, text, "checkpoint_every=3", "eval_every=2", "trainer.max_steps=8")
    kill = ["+callbacks.kill._target_=tests.faults.KillAt", "+callbacks.kill.step=5"]
    killed = run_cli("src.train", *args, *kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run = tmp_path / "run"
    crashed_rows = read_metrics(run)
    crashed_summary = json.loads((run / "summary.json").read_text())
    assert "4" in crashed_summary["val/loss_by_step"]  # validated after step 4, then killed

    # The fault callback's overrides run code, so a continuation replays them only when given again.
    again = ["+callbacks.kill._target_=tests.faults.KillAt", "+callbacks.kill.step=1000"]
    done = run_cli("src.train", f"ckpt_path={run}/checkpoints/last.ckpt", *again)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "moved to" in done.stderr

    rows = read_metrics(run)
    for key in ("train/loss", "val/loss"):
        steps = [int(row["step"]) for row in rows if row[key]]
        assert Counter(steps) == Counter(sorted(set(steps))), key  # each step once
    assert [int(row["step"]) for row in rows if row["train/loss"]] == list(range(1, 9))
    (side,) = (run / "csv").glob("metrics.rolled_back_*.csv")
    with side.open(newline="") as f:
        moved = list(csv.DictReader(f))
    assert moved and moved == [row for row in crashed_rows if int(row["step"]) > 3]

    summary = json.loads((run / "summary.json").read_text())
    val = {int(s): loss for s, loss in summary["val/loss_by_step"].items()}
    assert sorted(val) == [0, 2, 4, 6, 8]
    assert val[2] == crashed_summary["val/loss_by_step"]["2"]  # from the checkpoint, not redone
    logged_val = {int(row["step"]): float(row["val/loss"]) for row in rows if row["val/loss"]}
    assert logged_val == pytest.approx(val)
    best = min(val, key=val.get)
    assert (summary["val/loss_best"], summary["val/loss_best_step"]) == (val[best], best)
    last_loss = [float(row["train/loss"]) for row in rows if row["train/loss"]][-1]
    assert summary["tokens_seen"] == 8 * 4 * 32 and summary["train/loss_last"] == pytest.approx(last_loss)
    assert summary["wall_time_s"] > 0


def test_without_a_server_the_offline_fallback_still_records_the_rewind(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr("src.tracking.wandb_logger.rank_zero_info", lambda message: None)
    rewind, plain, offline = init_kwargs(monkeypatch, tmp_path, "auto", no_server=True)
    assert (rewind["mode"], plain["mode"], offline["mode"]) == ("online", "online", "offline")
    assert (
        "resume_from" not in plain
        and offline["resume_from"] == "abcd1234?_step=7"
        and "resume" not in offline
    )
