"""The seed documents' runs, `experiment=seed000` ... `seed004`: each composes to its seed's
settings, states the parameter count it builds, and trains (shortened, on a tiny model); seed
004's phase 2 continues at its own learning rate."""

import logging
import math

import pytest
import torch
from hydra.utils import instantiate

from src.models.smollm2 import SmolLM2
from src.training.global_batch import resolve_global_batch
from tests.conftest import REPO_ROOT
from tests.data.shards import write_shards
from tests.helpers import run_cli
from tests.training import (
    compose_train,
    hydra_context,
    logged,
    run_training,
    stream_overrides,
    tiny_run,
    write_text,
)

TEXT = "src.data.text_datamodule.TextFileDataModule"
STREAM = "src.data.stream_datamodule.StreamDataModule"

# (layers, hidden, MLP, KV heads, data, seq_len, batch, accumulation, lr, weight decay, schedule,
#  warmup, steps, eval, checkpoint, samples, activation checkpointing), as each seed states or we chose.
SETTINGS = {
    "seed000": (12, 768, 2048, 12, TEXT, 64, 4, 1, 3e-4, 0.1, "constant", 0, 5000, 500, 2500, 500, False),
    "seed001": (30, 576, 1536, 3, STREAM, 512, 32, 1, 3e-4, 0.1, "constant", 100, 5000, 500, 500, 500, False),
    "seed002": (12, 768, 2048, 12, TEXT, 2048, 8, 4, 5e-4, 0.1, "constant", 0, 5000, 100, 500, 200, True),
    "seed003": (30, 576, 1536, 3, TEXT, 2048, 8, 4, 3e-3, 0.01, "constant", 250, 5000, 500, 1000, 500, False),
    "seed004": (30, 576, 1536, 3, TEXT, 2048, 8, 4, 3e-4, 0.1, "linear", 25, 1250, 125, 125, 125, True),
}
PARAMETERS = {"seed000": 122_702_592, "seed002": 122_702_592} | dict.fromkeys(
    ("seed001", "seed003", "seed004"), 134_515_008
)
# The model shrunk to the tiny preset's widths; the rest of the recipe stays the seed's.
TINY_WIDTHS = (
    "model.hidden_size=64",
    "model.intermediate_size=192",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=2",
)


def recipe_file(seed: str) -> str:
    return (REPO_ROOT / "src" / "conf" / "experiment" / f"{seed}.yaml").read_text()


@pytest.mark.parametrize("seed", sorted(SETTINGS))
def test_each_seed_composes_to_its_settings_and_states_the_parameters_it_builds(seed):
    with hydra_context():
        cfg = compose_train([f"experiment={seed}"])
    assert (
        cfg.model.num_layers,
        cfg.model.hidden_size,
        cfg.model.intermediate_size,
        cfg.model.num_kv_heads,
        cfg.data._target_,
        cfg.data.seq_len,
        cfg.data.batch_size,
        resolve_global_batch(cfg, set()).accumulation,
        cfg.optim.lr,
        cfg.optim.weight_decay,
        cfg.schedule.kind,
        cfg.schedule.warmup_steps,
        cfg.trainer.max_steps,
        cfg.eval_every,
        cfg.checkpoint_every,
        cfg.callbacks.text_samples.every_n_steps,
        cfg.activation_checkpointing,
    ) == SETTINGS[seed]
    assert cfg.reference.name == f"seed {seed[-3:]}"
    with torch.device("meta"):
        built = SmolLM2(instantiate(cfg.model)).num_parameters()
    assert built == PARAMETERS[seed]
    assert f"{built:,} parameters" in recipe_file(seed)  # the file's comment says what it builds


def test_seed002_samples_as_its_seed_does():
    with hydra_context():
        samples = compose_train(["experiment=seed002"]).callbacks.text_samples
    assert (samples.temperature, samples.top_k, samples.top_p, samples.max_new_tokens) == (1.0, 50, 0.95, 100)


def test_cfg_job_shows_a_seeds_settings():
    result = run_cli("src.train", "experiment=seed004", "--cfg", "job")
    assert result.returncode == 0, result.stderr[-3000:]
    for line in ("name: seed 004", "max_steps: 1250", "tokens_per_step: 65536", "kind: linear", "lr: 0.0003"):
        assert line in result.stdout, line


def shortened(seed: str, tmp_path, *extra: str) -> list[str]:
    """The seed's recipe on the tiny widths for a few steps, on local text or parquet shards;
    a stated accumulation is kept (2 micro-batches of 4 x 32 tokens)."""
    accumulation = ("tokens_per_step=256",) if SETTINGS[seed][7] > 1 else ()
    args = (f"experiment={seed}", *TINY_WIDTHS, *accumulation, *extra)
    if SETTINGS[seed][4] == STREAM:
        write_shards(tmp_path / "shards")
        return stream_overrides(tmp_path, tmp_path / "shards", "data.num_workers=0", *args)
    return tiny_run(tmp_path, f"data.path={write_text(tmp_path / 'input.txt')}", *args)


def check_shortened_run(run, seed: str, messages: list[str]) -> None:
    """Two updates trained and logged, the untrained model validated, a checkpoint and samples
    written, and our parameter count printed beside the seed's."""
    assert sorted(logged(run, "train/loss"))[:2] == [1, 2]
    assert sorted(logged(run, "val/loss")) == [0]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "samples.jsonl").is_file()
    assert f"recipe: experiment={seed}" in messages
    assert any(m.startswith("parameters: ") and f"(seed {seed[-3:]} states " in m for m in messages)


@pytest.mark.parametrize("seed", ["seed000", "seed001", "seed002", "seed003"])  # seed004: below
def test_each_seed_trains_shortened(tmp_path, seed, caplog):
    with caplog.at_level(logging.INFO):
        metrics = run_training(shortened(seed, tmp_path, "trainer.max_steps=2"))
    assert math.isfinite(metrics["train/loss"])
    check_shortened_run(tmp_path / "run", seed, caplog.messages)


def test_seed004_trains_shortened_and_phase_two_continues_at_its_own_learning_rate(tmp_path, caplog):
    """2 updates on the linear schedule (3-step warmup to 3e-4), then the seed's phase-2 command:
    constant 3e-5 from the next update on."""
    with caplog.at_level(logging.INFO):
        run_training(shortened("seed004", tmp_path, "trainer.max_steps=2"))
    check_shortened_run(tmp_path / "run", "seed004", caplog.messages)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    phase2 = ("trainer.max_steps=3", "schedule.kind=constant", "optim.lr=3e-5", f"ckpt_path={last}")
    run_training(shortened("seed004", tmp_path, *phase2))
    lr = logged(tmp_path / "run", "lr")
    assert sorted(lr) == [1, 2, 3]
    assert [lr[1], lr[2], lr[3]] == pytest.approx([1e-4, 2e-4, 3e-5], rel=1e-5)
    assert sorted(logged(tmp_path / "run", "train/loss")) == [1, 2, 3]
