"""Data parallel on 2 CPU processes (gloo): disjoint data per rank, the same loss and weights as
one process with the global batch, and a DDP checkpoint that continues exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.windows import ShuffledWindowBatches
from src.training.checkpoint import read_checkpoint
from tests.helpers import run_cli
from tests.training import fast_overrides, logged, run_training, write_text


def test_ranks_split_the_global_batch():
    """Rank r's batch b is rows [(2b + r)B, (2b + r + 1)B) of the order one process with 2B walks."""
    tokens = np.arange(4000, dtype=np.uint16)
    single = ShuffledWindowBatches(tokens, seq_len=8, batch_size=8, seed=3)
    ranks = [ShuffledWindowBatches(tokens, 8, 4, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for b in (0, 1, 130):  # 130 crosses into the next epoch
        assert torch.equal(torch.cat([ranks[0].batch(b), ranks[1].batch(b)]), single.batch(b))
        assert not set(ranks[0].batch(b)[:, 0].tolist()) & set(ranks[1].batch(b)[:, 0].tolist())


@pytest.mark.slow
def test_ddp_matches_one_process_and_resumes(tmp_path):
    text = write_text(tmp_path / "input.txt")
    # The kernels are pinned: measured, a rank's batch of 4 and one process's batch of 8 are
    # different workloads that may keep different kernels, whose roundings AdamW can amplify
    # past the tolerance below on weights whose gradient is near zero.
    common = (
        "schedule.total_steps=4",
        "callbacks.text_samples.prompts=[]",
        "eval_every=2",
        "kernels_policy=always",
        "data.seq_len=30",  # 23 validation windows: an odd count, see below
        "trainer.limit_val_batches=1.0",
    )
    run_training(fast_overrides(tmp_path / "one", text, "trainer.max_steps=4", "data.batch_size=8", *common))

    ddp = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4")
    last = tmp_path / "ddp" / "run" / "checkpoints" / "last.ckpt"
    for extra in (["trainer.max_steps=2"], ["trainer.max_steps=4", f"ckpt_path={last}"]):
        result = run_cli("src.train", *fast_overrides(tmp_path / "ddp", text, *ddp, *common, *extra))
        assert result.returncode == 0, result.stderr[-3000:]

    # The DDP loss is the mean over ranks, so it is the loss of the same global batch. (Compared in
    # order: the CSV step column of a DDP continuation is one ahead, Lightning's logging counter.)
    one, two = logged(tmp_path / "one" / "run", "train/loss"), logged(tmp_path / "ddp" / "run", "train/loss")
    assert len(two) == 4 and list(two.values()) == pytest.approx(list(one.values()), rel=1e-4)
    windows = [
        logged(run, "data/windows_seen") for run in (tmp_path / "one" / "run", tmp_path / "ddp" / "run")
    ]
    assert list(windows[1].values()) == list(windows[0].values()) == [8.0, 16.0, 24.0, 32.0]  # both ranks'
    a = read_checkpoint(tmp_path / "one" / "run" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(last)
    assert b["global_step"] == 4
    # Each rank reads every other validation window; with an odd count one rank repeats a window
    # to run as many batches, which must not count: val/loss is that of one process.
    assert a["val_windows"] == b["val_windows"] and a["val_windows"] % 2 == 1
    one, two = logged(tmp_path / "one" / "run", "val/loss"), logged(tmp_path / "ddp" / "run", "val/loss")
    assert len(two) == 3 and list(two.values()) == pytest.approx(list(one.values()), rel=1e-5)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-4, atol=1e-5)
