"""`python -m src.report <run>`: losses by validation step, speed, time, sample, memorisation verdict."""

from __future__ import annotations

import json

import pytest

from src.callbacks.run_summary import VAL_LOSSES
from src.plot import read_series
from src.report import Row, loss_rows, losses, report, verdict
from tests.helpers import run_cli, write_metrics

VAL = {0: 11.0, 20: 4.0, 40: 6.0}


def memorising_run(run_dir) -> None:
    """Train loss falls every step; validation improves to step 20, then rises. As a run logs
    them: the validation before training first, at step 0; step k's train loss at step k, and the
    validation after it there too; validations by step in summary.json."""
    rows = [{"step": 0, "val/loss": VAL[0]}]
    for s in range(1, 41):
        rows.append({"step": s, "train/loss": 10.0 / s, "tokens_per_s": 100 + s})
        if s in VAL:
            rows.append({"step": s, "val/loss": VAL[s]})
    write_metrics(run_dir, rows)
    by_step = {str(s): v for s, v in VAL.items()}
    summary = {"wall_time_s": 90.0, "tokens_seen": 10240, VAL_LOSSES: by_step}  # RunSummary's key
    (run_dir / "summary.json").write_text(json.dumps(summary))
    samples = [{"step": s, "prompt": "Once", "completion": f" upon {s}"} for s in (0, 40)]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))


def test_each_validation_gets_the_mean_train_loss_logged_since_the_previous(tmp_path):
    memorising_run(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    series = read_series(tmp_path / "csv" / "metrics.csv")
    rows = loss_rows(*losses(series, summary))
    assert loss_rows(*losses(series, {})) == rows  # the CSV alone (a summary not written) agrees
    assert [row.step for row in rows] == [0, 20, 40]
    assert rows[0].train_loss is None and rows[0].val_loss == 11.0
    assert rows[1].train_loss == pytest.approx(sum(10.0 / s for s in range(1, 21)) / 20)
    assert rows[2].train_loss == pytest.approx(sum(10.0 / s for s in range(21, 41)) / 20)


def test_verdicts():
    falling = [Row(0, None, 11.0), Row(20, 1.0, 4.0), Row(40, 0.3, 6.0)]
    assert verdict(falling) == (
        "memorising: val/loss rose from 4.0000 (step 20) to 6.0000 (step 40)"
        " while train/loss fell from 1.0000 to 0.3000"
    )
    flat_train = [Row(20, 1.0, 4.0), Row(40, 1.1, 6.0)]
    assert verdict(flat_train) == "val/loss rose from 4.0000 (step 20) to 6.0000 (step 40)"
    within_noise = [Row(20, 1.0, 4.0), Row(40, 0.5, 4.05)]
    assert verdict(within_noise) == (
        "not memorising: val/loss at the last validation (step 40) is 4.0500, within 2% of its best"
    )
    improving = [Row(0, None, 11.0), Row(20, 3.0, 4.0), Row(25, 2.5, None)]  # 5 steps after it
    assert verdict(improving) == (
        "not memorising: val/loss is at its lowest (4.0000) at the last validation (step 20)"
    )
    assert verdict([Row(0, None, 11.0)]) == "one validation only: no trend to judge"


def test_steps_trained_after_the_last_validation_get_a_row_of_their_own(tmp_path):
    """A run stopped between two validations: its last train losses are reported, not dropped."""
    memorising_run(tmp_path)
    series = read_series(tmp_path / "csv" / "metrics.csv")
    train, val = losses(series, {})
    train.update({41: 0.2, 42: 0.1})
    rows = loss_rows(train, val)
    assert rows[-1] == Row(42, pytest.approx(0.15), None)
    assert [row.step for row in rows] == [0, 20, 40, 42]


def test_report_of_a_run_folder(tmp_path):
    memorising_run(tmp_path)
    text = report(tmp_path, sample_chars=4)
    assert "40 steps, 10,240 tokens, 120 tokens/s (median of 40 logged), wall time 1.5 min" in text
    assert "| 20 | 1.7989 | 4.0000 |" in text
    assert "memorising: val/loss rose from 4.0000 (step 20)" in text
    assert text.endswith('sample at step 40: "Once upo"')


def test_cli_takes_the_run_folder_bare_and_refuses_a_missing_one(tmp_path):
    memorising_run(tmp_path / "run")
    result = run_cli("src.report", str(tmp_path / "run"))
    assert result.returncode == 0 and "memorising" in result.stdout
    missing = run_cli("src.report", str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: run_dir=")


def test_after_a_rollback_rows_follow_the_loggers_steps_not_the_weights(tmp_path):
    """4 steps undone at 20: the loggers' steps run to 28 for 24 steps of the weights, and the
    validation of weights step 24 is logged at step 28, where its train losses are."""
    rows = [{"step": 0, "val/loss": 11.0}]
    for s in range(1, 29):
        rows.append({"step": s, "train/loss": 9.0 if s in range(17, 21) else 3.0})  # 17-20: the spike
        if s in (16, 28):
            rows.append({"step": s, "val/loss": {16: 4.0, 28: 3.5}[s]})
    write_metrics(tmp_path, rows)
    summary = {VAL_LOSSES: {"0": 11.0, "16": 4.0, "24": 3.5}}  # keyed by the weights' step
    got = loss_rows(*losses(read_series(tmp_path / "csv" / "metrics.csv"), summary))
    assert [(row.step, row.val_loss) for row in got] == [(0, 11.0), (16, 4.0), (28, 3.5)]
    assert got[2].train_loss == pytest.approx((4 * 9.0 + 8 * 3.0) / 12)  # steps 17-28 as logged
    (tmp_path / "summary.json").write_text(json.dumps({**summary, "steps": 24, "tokens_seen": 24 * 128}))
    assert "24 steps (4 more logged, undone by loss-spike rollbacks), 3,072 tokens" in report(tmp_path)
