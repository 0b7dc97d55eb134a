"""A NaN loss stops the run before the weights change, or (nonfinite=skip) skips and counts the step."""

from __future__ import annotations

import pytest
import torch

from src.training.checkpoint import read_checkpoint
from src.training.lit_module import SmolLM2LitModule
from src.training.nonfinite import TrainingDiverged
from tests.training import fast_overrides, logged, run_training, write_text


@pytest.fixture
def poison(monkeypatch):
    """Makes the training loss NaN at the given global steps (0-based, before the update)."""
    steps: set[int] = set()
    loss = SmolLM2LitModule.loss

    def poisoned(self, batch):
        value = loss(self, batch)
        return value * float("nan") if self.training and self.trainer.global_step in steps else value

    monkeypatch.setattr(SmolLM2LitModule, "loss", poisoned)
    return steps


def finite(ckpt) -> bool:
    return all(torch.isfinite(v).all() for v in read_checkpoint(ckpt)["state_dict"].values())


def test_stop_names_the_step_and_keeps_the_last_good_state(tmp_path, poison):
    poison.add(3)
    overrides = fast_overrides(tmp_path, write_text(tmp_path / "input.txt"), "trainer.max_steps=8")
    with pytest.raises(TrainingDiverged, match=r"non-finite gradients at step 4 \(loss nan.*keeps step 3"):
        run_training(overrides)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 3 and finite(last)


def test_skip_drops_the_update_and_counts_it(tmp_path, poison):
    poison.update({2, 5})
    overrides = fast_overrides(tmp_path, write_text(tmp_path / "input.txt"), "trainer.max_steps=7")
    run_training(overrides + ["nonfinite=skip"])
    run = tmp_path / "run"
    skipped = logged(run, "nonfinite_skipped")
    assert skipped[1] == 0 and skipped[2] == 1 and skipped[6] == 2  # rows are logged after each step
    last = run / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 7 and finite(last)
    assert read_checkpoint(last)["nonfinite_skipped"] == 2
