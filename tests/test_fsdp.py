"""trainer=fsdp (FSDP2) on 2 CPU processes (gloo) against one process with the global batch.

One reference run (1 process, batch 8, 4 steps) and three sharded runs (2 processes, batch 4
each): 2 steps, their continuation to 4, and 4 straight with activation checkpointing; then
the step-2 checkpoint continued by 1 process accumulating 2 batches of 4. All in fp32 with
every CPU kernel (kernels_policy=always, so they are shown to work sharded) and a weight decay of 1.0,
so a decay missing on either side would move the weights by about lr x decay = 0.1-0.3% per
step, far outside the tolerance (rtol 1e-4, atol 1e-5: sharding changes only the order of
the gradient sums). The loss is that of the global batch on every side.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from src.errors import UserError
from src.export import export_checkpoint
from src.serving import load_pretrained
from src.training import checkpoint as ckpt
from src.training.fsdp_strategy import point_link_at
from tests.helpers import run_cli
from tests.training import fast_overrides, logged, read_metrics, run_training, write_text

COMMON = (
    "schedule.total_steps=4",
    "eval_every=2",
    "checkpoint_every=2",
    "optim.weight_decay=1.0",
    "callbacks.text_samples.every_n_steps=2",
    "kernels_policy=always",
)
FSDP = ("trainer=fsdp", "trainer.devices=2", "data.batch_size=4")
NAMES = ("one", "split", "straight", "shrunk", "bf16")


def train_cli(*overrides: str) -> None:
    result = run_cli("src.train", *overrides)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(module_tmp_path) -> SimpleNamespace:
    tmp = module_tmp_path
    text = write_text(tmp / "input.txt")
    one, split, straight, shrunk, bf16 = (tmp / name for name in NAMES)
    run_training(fast_overrides(one, text, "trainer.max_steps=4", "data.batch_size=8", *COMMON))
    train_cli(*fast_overrides(split, text, *FSDP, *COMMON, "trainer.max_steps=2"))
    step2 = split / "run" / "checkpoints" / "step_0000002.ckpt"
    last = split / "run" / "checkpoints" / "last.ckpt"
    train_cli(*fast_overrides(split, text, *FSDP, *COMMON, "trainer.max_steps=4", f"ckpt_path={last}"))
    train_cli(
        *fast_overrides(
            straight, text, *FSDP, *COMMON, "trainer.max_steps=4", "activation_checkpointing=true"
        )
    )
    # The step-2 checkpoint continued by one process with the same global batch.
    train_cli(
        *fast_overrides(shrunk, text, *FSDP, *COMMON, "trainer.max_steps=4", f"ckpt_path={step2}"),
        "trainer.devices=1",
        "trainer.accumulate_grad_batches=2",
    )
    # bf16-mixed, as precision=auto trains on bf16 hardware; no validation first, so the step-0
    # samples come from a model whose weights were never gathered yet.
    train_cli(
        *fast_overrides(bf16, text, *FSDP, *COMMON, "trainer.max_steps=2", "val_at_start=false"),
        "precision=bf16-mixed",
    )
    return SimpleNamespace(tmp=tmp, **{name: tmp / name / "run" for name in NAMES})


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]


@pytest.mark.slow
def test_sharded_losses_and_weights_equal_one_process_with_the_global_batch(runs):
    expected = list(logged(runs.one, "train/loss").values())
    for run in (runs.split, runs.straight):
        assert list(logged(run, "train/loss").values()) == pytest.approx(expected, rel=1e-4)
    reference = final_weights(runs.one)
    for run in (runs.split, runs.straight, runs.shrunk):
        weights = final_weights(run)
        assert weights.keys() == reference.keys()
        for key, value in reference.items():
            torch.testing.assert_close(weights[key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_sharded_per_layer_health_equals_one_process(runs):
    """Each rank sums the squares of its shards and one all-reduce adds them: whole layers' norms."""
    keys = [key for key in read_metrics(runs.one)[0] if key.startswith("health/")]
    assert len(keys) == 3 * 4  # grad, weight and update norms of embed, 2 blocks, final norm
    for run in (runs.split, runs.straight):
        for key in keys:
            assert logged(run, key) == pytest.approx(logged(runs.one, key), rel=1e-3), key


@pytest.mark.slow
def test_a_sharded_continuation_is_exact_at_the_same_and_at_another_world_size(runs):
    """2 + 2 steps at 2 processes equal 4 straight (recomputing activations) bit for bit; 2 steps at
    2 processes + 2 at 1 match one process."""
    split, straight = final_weights(runs.split), final_weights(runs.straight)
    for key, value in straight.items():
        assert torch.equal(split[key], value), key
    assert logged(runs.split, "train/loss") == logged(runs.straight, "train/loss")
    one, shrunk = logged(runs.one, "train/loss"), logged(runs.shrunk, "train/loss")
    assert len(shrunk) == 2 and list(shrunk.values()) == pytest.approx(list(one.values())[2:], rel=1e-4)


@pytest.mark.slow
def test_every_rank_samples_and_rank_zero_writes_the_text_of_one_process(runs):
    def rows(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]

    assert [row["step"] for row in rows(runs.split)] == [0, 0, 2, 2, 4, 4]
    assert rows(runs.split) == rows(runs.one)


@pytest.mark.slow
def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_weights(runs):
    """The FSDP2 policy gathers bf16 weights (no autocast on top); the sharded ones stay fp32."""
    expected = list(logged(runs.one, "train/loss").values())[:2]
    assert list(logged(runs.bf16, "train/loss").values()) == pytest.approx(expected, rel=2e-2)
    weights = final_weights(runs.bf16)
    assert {value.dtype for value in weights.values()} == {torch.float32}
    reference = final_weights(runs.one)
    assert any(not torch.equal(weights[key], value) for key, value in reference.items())  # bf16 compute
    samples = (runs.bf16 / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in samples] == [0, 0, 2, 2]


@pytest.mark.slow
def test_a_sharded_checkpoint_exports_to_transformers_with_the_same_logits(runs):
    from transformers import LlamaForCausalLM

    last = runs.split / "checkpoints" / "last.ckpt"
    export_checkpoint(last, runs.tmp / "hf")
    hf = LlamaForCausalLM.from_pretrained(runs.tmp / "hf", local_files_only=True).eval()
    model = load_pretrained(last)  # what src.generate and src.app load
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_sharded_checkpoint_missing_a_shard_is_a_one_line_error(runs, tmp_path):
    broken = tmp_path / "broken.ckpt"
    shutil.copytree(runs.split / "checkpoints" / "last.ckpt", broken)
    next(broken.glob("*.distcp")).unlink()
    assert ckpt.read_checkpoint(broken, weights=False)["global_step"] == 4  # the metadata alone still reads
    with pytest.raises(UserError, match="not a readable sharded checkpoint") as err:
        ckpt.read_checkpoint(broken)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_sharded_checkpoint_under_another_strategy_is_a_one_line_error(runs, tmp_path):
    last = runs.split / "checkpoints" / "last.ckpt"
    result = run_cli("src.train", f"ckpt_path={last}", "trainer=ddp", "trainer.max_steps=6")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {last} is a sharded checkpoint (trainer=fsdp); continue it with trainer=fsdp, "
        "on any number of devices, or python -m src.export it for other uses"
    ]


def test_a_new_checkpoint_folder_replaces_the_old_in_one_rename_and_a_killed_ones_leftovers_go(tmp_path):
    link = tmp_path / "last.ckpt"
    old, killed, new = (tmp_path / f".last.ckpt-{n}" for n in (1, 2, 3))
    old.mkdir()
    point_link_at(link, old)
    assert link.is_symlink() and link.resolve() == old.resolve()
    killed.mkdir()
    (killed / "__0_0.distcp").write_bytes(b"\0")  # a save killed before its rename
    assert link.resolve() == old.resolve()  # last.ckpt still holds the previous checkpoint
    new.mkdir()
    point_link_at(link, new)
    assert link.is_symlink() and link.resolve() == new.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, "last.ckpt"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sharded_training_on_one_gpu_continues_and_exports(tmp_path):
    """NCCL, bf16-mixed and fused AdamW on DTensors: paths the CPU runs above do not take."""
    from transformers import LlamaForCausalLM

    text = write_text(tmp_path / "input.txt")
    gpu = ("trainer=fsdp", "trainer.accelerator=gpu", "trainer.devices=1", "precision=bf16-mixed", *COMMON)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train_cli(*fast_overrides(tmp_path, text, "trainer.max_steps=2"), *gpu)
    train_cli(*fast_overrides(tmp_path, text, "trainer.max_steps=4", f"ckpt_path={last}"), *gpu)
    assert len(logged(tmp_path / "run", "train/loss")) == 4
    assert ckpt.read_checkpoint(last, weights=False)["global_step"] == 4
    export_checkpoint(last, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(tmp_path / "hf", local_files_only=True).eval()
    model = load_pretrained(last)
    x = torch.randint(0, model.config.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-5, atol=1e-5)
