"""Training on streamed shards end to end: a continuation is the uninterrupted run, bit for bit."""

import json

import pytest
import torch

from src.training.checkpoint import read_checkpoint
from tests.data.shards import write_shards
from tests.helpers import run_cli
from tests.training import logged, run_training, stream_overrides, tiny_run


@pytest.mark.slow
def test_stream_continuation_is_exact(tmp_path):
    """2 steps straight == 1 step, then 1 more from last.ckpt: same losses, weights and documents
    (2 workers, 3 micro-batches per step: the continuation starts on batch 3, so on the second worker)."""
    shards = tmp_path / "shards"
    write_shards(shards)
    common = (
        "data.num_workers=2",
        "trainer.accumulate_grad_batches=3",
        "schedule.total_steps=2",
        "schedule.warmup_steps=1",
        "eval_every=1",
        "checkpoint_every=1",
    )
    run_training(stream_overrides(tmp_path / "a", shards, "trainer.max_steps=2", *common))
    run_training(stream_overrides(tmp_path / "b", shards, "trainer.max_steps=1", *common))
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    saved = read_checkpoint(last)["StreamDataModule"]["ranks"]
    assert saved[0]["consumed"] == 3 and len(saved[0]["readers"]) == 2
    run_training(
        stream_overrides(tmp_path / "b", shards, "trainer.max_steps=2", f"ckpt_path={last}", *common)
    )

    a = read_checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")
    b = read_checkpoint(last)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["StreamDataModule"] == b["StreamDataModule"]
    for metric in ("train/loss", "val/loss", "data/documents_seen", "data/unique_documents"):
        straight, continued = logged(tmp_path / "a" / "run", metric), logged(tmp_path / "b" / "run", metric)
        assert straight == continued and straight, metric
    assert len(logged(tmp_path / "a" / "run", "train/loss")) == 2
    plan = json.loads((tmp_path / "a" / "run" / "plan.json").read_text())
    assert (plan["data"], plan["epochs"]) == (f"{shards}/*.parquet", None)  # a stream: epochs unknown


@pytest.mark.slow
def test_a_continuation_with_another_accumulation_goes_on_at_the_next_batch(tmp_path):
    """1 step of 3 micro-batches, then 1 of 2 (2 workers): the position after 5 batches, as 5
    steps of 1 leave it."""
    shards = tmp_path / "shards"
    write_shards(shards)
    common = ("data.num_workers=2", "schedule.total_steps=5", "schedule.warmup_steps=1", "checkpoint_every=1")
    run_training(stream_overrides(tmp_path / "a", shards, "trainer.max_steps=5", *common))
    first = ("trainer.max_steps=1", "trainer.accumulate_grad_batches=3")
    run_training(stream_overrides(tmp_path / "b", shards, *first, *common))
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    then = ("trainer.max_steps=2", "trainer.accumulate_grad_batches=2", f"ckpt_path={last}")
    run_training(stream_overrides(tmp_path / "b", shards, *then, *common))
    straight = read_checkpoint(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt")["StreamDataModule"]
    continued = read_checkpoint(last)["StreamDataModule"]
    assert continued["ranks"][0]["consumed"] == 5 and continued["ranks"] == straight["ranks"]
    documents = [logged(tmp_path / run / "run", "data/documents_seen") for run in ("a", "b")]
    assert documents[1][2] == documents[0][5]  # after 5 batches both ways


@pytest.mark.slow
def test_a_continuation_may_change_the_dataloader_workers(tmp_path):
    """2 workers for a step, then 1, then 3, through the CLI's checkpoints: each continuation takes
    the position over (files' passes and rows; tested document by document in test_stream.py)."""
    shards = tmp_path / "shards"
    write_shards(shards)
    last = tmp_path / "run" / "run" / "checkpoints" / "last.ckpt"
    common = ("schedule.total_steps=3", "schedule.warmup_steps=1", "checkpoint_every=1")
    for step, workers in ((1, 2), (2, 0), (3, 3)):
        resume = (f"ckpt_path={last}",) if step > 1 else ()
        steps, readers = f"trainer.max_steps={step}", f"data.num_workers={workers}"
        run_training(stream_overrides(tmp_path / "run", shards, steps, readers, *resume, *common))
        saved = read_checkpoint(last)
        assert saved["global_step"] == step
        readers = saved["StreamDataModule"]["ranks"][0]["readers"]
        assert len(readers) == max(1, workers)
        if step > 1:  # handed on: every file, whichever reader (a reader yet to serve a batch has none)
            assert sorted(file for state in readers for file, _, _ in state["files"]) == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_continuation_takes_keys_of_the_data_group_its_run_chose(tmp_path):
    """`data.skip_bad_files=true`, which a bad shard's error line asks for, is a key of the stream's
    data group only: the continuation is composed with the run's groups, as its replay is."""
    shards = tmp_path / "shards"
    write_shards(shards)
    run_training(stream_overrides(tmp_path, shards, "trainer.max_steps=1"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    skip = "data.skip_bad_files=true"
    result = run_cli("src.train", *tiny_run(tmp_path, f"ckpt_path={last}", "trainer.max_steps=2", skip))
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_checkpoint(last)["global_step"] == 2
    assert "data.skip_bad_files=true" in read_checkpoint(last)["cli_overrides"]
