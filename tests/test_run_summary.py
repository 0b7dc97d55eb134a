"""summary.json: written whole after each validation, and never a temporary left beside it."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from src.callbacks.run_summary import VAL_LOSSES, RunSummary


def trainer_at(step: int) -> SimpleNamespace:
    module = SimpleNamespace(tokens_seen=lambda: 64 * step)  # the module's count (tests/test_plan.py)
    return SimpleNamespace(
        global_rank=0, global_step=step, loggers=[], callback_metrics={}, lightning_module=module
    )


def test_the_summary_holds_the_best_validation_and_the_losses_by_step(tmp_path):
    summary = RunSummary(str(tmp_path / "summary.json"))
    summary.val_losses = {10: 3.5, 20: 3.25, 30: 3.5}
    summary._write(trainer_at(30))
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written["val/loss_best"] == 3.25 and written["val/loss_best_step"] == 20
    assert written[VAL_LOSSES] == {"10": 3.5, "20": 3.25, "30": 3.5}
    assert written["tokens_seen"] == 64 * 30 and written["steps"] == 30
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_a_summary_that_cannot_be_put_in_place_leaves_no_temporary(tmp_path):
    (tmp_path / "summary.json").mkdir()  # a folder where the file goes: the rename fails
    summary = RunSummary(str(tmp_path / "summary.json"))
    with pytest.raises(IsADirectoryError):
        summary._write(trainer_at(0))
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
