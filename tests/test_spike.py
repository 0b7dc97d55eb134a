"""A loss spike from a corrupted batch: spike.mode=rollback returns to the last good log step
exactly, skips the data since, and ends where a run given that data without the window ends."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.utils._pytree as pytree
from torch.overrides import TorchFunctionMode

from src.callbacks.run_summary import VAL_LOSSES
from src.data.windows import ShuffledWindowBatches
from src.errors import UserError
from src.training.checkpoint import read_checkpoint
from src.training.config_checks import check_spike
from src.training.nonfinite import TrainingDiverged
from src.training.spike import SpikeGuard
from src.training.spike_rule import SpikeRule
from tests.test_host_sync import HostReadCensus
from tests.training import compose_train, fast_overrides, hydra_context, logged, run_training, write_text

# Log (and decide) every 4 steps; the batch of step 17 is random token ids, seen at log step 20,
# so the run goes back to step 16 and skips the batches of steps 17-20 (batch indices 16-19).
SPIKE_STEP, GOOD_STEP, SEEN_AT, MAX_STEPS = 17, 16, 20, 24
CORRUPT = ("+callbacks.fault._target_=tests.faults.CorruptBatchAt", f"+callbacks.fault.step={SPIKE_STEP - 1}")


def overrides(tmp: Path, *extra: str, max_steps: int = MAX_STEPS) -> list[str]:
    tmp.mkdir(exist_ok=True)
    return fast_overrides(
        tmp,
        write_text(tmp / "input.txt"),
        f"trainer.max_steps={max_steps}",
        f"schedule.total_steps={MAX_STEPS}",  # one horizon for runs of every length
        "optim.lr=0.01",  # the loss is flat by step 16, so the random batch stands out
        "kernels=[]",
        "trainer.log_every_n_steps=4",
        "checkpoint_every=8",
        "eval_every=8",
        "val_at_start=false",
        "spike.window=8",
        "spike.min_steps=8",
        *extra,
    )


def weights(run: Path, name: str = "last.ckpt") -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "run" / "checkpoints" / name)["state_dict"]


def assert_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_rollback_equals_a_run_without_the_bad_window_and_continues_exactly(tmp_path, monkeypatch):
    rolled = tmp_path / "rolled"
    with pytest.warns(
        UserWarning, match=rf"loss spike at step {SPIKE_STEP}: .* rolled back to step {GOOD_STEP}"
    ):
        run_training(overrides(rolled, "spike.mode=rollback", *CORRUPT))
    last = read_checkpoint(rolled / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == MAX_STEPS and last["spike"]["spikes"] == 1
    skipped = SEEN_AT - GOOD_STEP
    windows = (MAX_STEPS + skipped) * 4  # batches of 4 windows: those trained on and those skipped
    assert last["TextFileDataModule"] == {
        "step": MAX_STEPS,
        "windows_consumed": windows,
        "skipped_batches": skipped,
    }
    # The loggers' step counts the undone steps too: rows go on past max_steps, never back.
    assert max(logged(rolled / "run", "train/loss")) == MAX_STEPS + SEEN_AT - GOOD_STEP
    # Validation stays on eval_every steps of the weights, the last one included.
    summary = json.loads((rolled / "run" / "summary.json").read_text())
    assert sorted(map(int, summary[VAL_LOSSES])) == [8, 16, 24]
    # The log step that decided (row SEEN_AT) logs its decision, and no update of the step it undid.
    assert logged(rolled / "run", "spike/spikes")[SEEN_AT] == 1.0
    assert logged(rolled / "run", "spike/skipped_batches")[SEEN_AT] == skipped
    assert SEEN_AT in logged(rolled / "run", "health/grad_norm/embed")
    assert math.isnan(logged(rolled / "run", "health/update_ratio/embed")[SEEN_AT])

    # Stopped after the rollback and continued: the same weights.
    split = tmp_path / "split"
    run_training(overrides(split, "spike.mode=rollback", *CORRUPT, max_steps=SEEN_AT))
    ckpt = split / "run" / "checkpoints" / "last.ckpt"
    run_training(overrides(split, "spike.mode=rollback", *CORRUPT, f"ckpt_path={ckpt}"))
    assert_equal(weights(rolled), weights(split))
    # The rows logged up to the checkpoint (its step plus the undone ones) are kept, not set aside.
    assert not list((split / "run" / "csv").glob("metrics.rolled_back_*"))
    assert logged(split / "run", "train/loss") == logged(rolled / "run", "train/loss")

    # The same data without batches 16-19, no corruption, no guard: the same weights.
    batch = ShuffledWindowBatches.batch
    skip = SEEN_AT - GOOD_STEP
    monkeypatch.setattr(
        ShuffledWindowBatches, "batch", lambda self, i: batch(self, i + skip if i >= GOOD_STEP else i)
    )
    reference = tmp_path / "reference"
    run_training(overrides(reference))
    assert_equal(weights(rolled), weights(reference))


@pytest.mark.slow
def test_past_max_rollbacks_the_run_stops_at_the_last_good_state(tmp_path):
    message = (
        rf"loss spike at step {SPIKE_STEP}: .* after 0 rollback\(s\) .* last.ckpt holds step {GOOD_STEP}"
    )
    with pytest.raises(TrainingDiverged, match=message):
        run_training(overrides(tmp_path, "spike.mode=rollback", "spike.max_rollbacks=0", *CORRUPT))
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == GOOD_STEP
    # Past the spiking data: a continuation takes the batches after it (saved again at step 16).
    assert last["TextFileDataModule"]["windows_consumed"] == SEEN_AT * 4
    assert last["spike"]["rewound_steps"] == SEEN_AT - GOOD_STEP
    assert_equal(last["state_dict"], weights(tmp_path, f"step_{GOOD_STEP:07d}.ckpt"))


def test_the_guard_reads_the_device_only_at_log_steps(tmp_path):
    HostReadCensus.runs.clear()
    census = "+callbacks.census._target_=tests.test_host_sync.HostReadCensus"
    run_training(overrides(tmp_path, "spike.mode=rollback", census, max_steps=8))
    (run,) = HostReadCensus.runs
    assert {step: run.reads[step] for step in (1, 2, 3, 5, 6, 7)} == {step: [] for step in (1, 2, 3, 5, 6, 7)}
    assert any("spike.py" in read for read in run.reads[4])  # the decision's one read


def test_a_rollback_needs_checkpoints_at_log_steps_and_a_text_file(tmp_path):
    with hydra_context():
        cfg = compose_train(overrides(tmp_path, "spike.mode=rollback", "checkpoint_every=6"))
        with pytest.raises(
            UserError, match=r"checkpoint_every=6 must be a multiple of trainer.log_every_n_steps=4"
        ):
            check_spike(cfg)
        cfg = compose_train(overrides(tmp_path, "spike.mode=rollback", "data=cosmopedia_v2"))
        with pytest.raises(UserError, match=r"spike.mode=rollback needs a text-file data module"):
            check_spike(cfg)
    with pytest.raises(UserError, match=r"spike.mode must be one of"):
        SpikeRule(mode="stop")


class HostDataCensus(TorchFunctionMode):
    """Records tensors made from host data (Python numbers, host tensors) while the guard runs on
    another device: on a GPU each is a blocking copy in every step."""

    FROM_HOST_DATA = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        tensors = [a for a in pytree.tree_leaves((args, kwargs or {})) if isinstance(a, torch.Tensor)]
        if func in self.FROM_HOST_DATA or any(t.device.type == "cpu" for t in tensors):
            self.found.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_judging_each_loss_sends_nothing_from_the_host_to_the_device():
    # "meta" stands in for the GPU: the losses and the guard's buffers live there.
    guard = SpikeGuard(SpikeRule(mode="warn", window=4, min_steps=2))
    with HostDataCensus() as census:
        for step in range(1, 7):
            guard.observe(torch.full((), 2.0 + step, device="meta"), step)
    assert guard.seen == 6
    assert census.found == []
