"""The global batch: tokens per optimizer step stay the recipe's whatever the number of processes."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from src.errors import UserError
from src.training.global_batch import process_count, resolve_global_batch
from tests.training import compose_train, hydra_context

SEED = ["model=smollm2_135m", "trainer.accelerator=cpu"]  # the recipe states 65,536 tokens per step


def global_batch(overrides: list[str], overridden: set[str] | None = None):
    with hydra_context():
        cfg = compose_train(overrides)
    batch = resolve_global_batch(cfg, overridden or set())
    return batch, cfg


@pytest.mark.parametrize(
    ("extra", "accumulation", "processes"),
    [
        ([], 4, 1),
        (["trainer.devices=2"], 2, 2),
        (["trainer.devices=4"], 1, 4),
        (["trainer.devices=8", "data.batch_size=4"], 1, 8),
        (["trainer.devices=2", "trainer.num_nodes=2"], 1, 4),
        (["trainer.devices=2", "data.batch_size=2"], 8, 2),
    ],
)
def test_the_seed_recipe_keeps_65536_tokens_per_step(extra, accumulation, processes):
    batch, cfg = global_batch([*SEED, *extra])
    assert (batch.tokens, batch.accumulation, batch.processes) == (65536, accumulation, processes)
    assert cfg.trainer.accumulate_grad_batches == accumulation  # what the Trainer is built with
    assert cfg.trainer.val_check_interval == cfg.eval_every * accumulation


def test_the_step_is_printed_as_its_factors():
    batch, _ = global_batch([*SEED, "trainer.devices=2"])
    assert str(batch) == (
        "65,536 tokens per optimizer step = 8 sequences x 2,048 tokens x 2 micro-batches x 2 process(es)"
    )


def test_without_tokens_per_step_the_accumulation_is_as_given_and_the_batch_grows():
    batch, cfg = global_batch(
        ["trainer.devices=2", "trainer.accumulate_grad_batches=3", "trainer.accelerator=cpu"]
    )
    assert cfg.tokens_per_step is None
    assert (batch.accumulation, batch.tokens) == (3, 16 * 256 * 3 * 2)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["trainer.devices=8"],
            "tokens_per_step=65,536 is not a multiple of one micro-batch on every process "
            "(8 x 2,048 tokens x 8 process(es) = 131,072); pass data.batch_size=4, or change tokens_per_step",
        ),
        (
            ["trainer.devices=3"],
            "tokens_per_step=65,536 is not a multiple of one micro-batch on every process "
            "(8 x 2,048 tokens x 3 process(es) = 49,152); change data.seq_len or tokens_per_step",
        ),
        (
            ["data.batch_size=6"],
            "tokens_per_step=65,536 is not a multiple of one micro-batch on every process "
            "(6 x 2,048 tokens x 1 process(es) = 12,288); pass data.batch_size=4, or change tokens_per_step",
        ),
    ],
)
def test_a_step_that_does_not_divide_is_one_line_naming_the_fix(extra, message):
    with pytest.raises(UserError) as err:
        global_batch([*SEED, *extra])
    assert str(err.value) == message


def test_an_explicit_accumulation_beside_tokens_per_step_is_refused():
    with pytest.raises(UserError, match="trainer.accumulate_grad_batches and tokens_per_step=65536 both set"):
        global_batch([*SEED, "trainer.accumulate_grad_batches=2"], {"trainer.accumulate_grad_batches"})


@pytest.mark.parametrize(
    ("devices", "nodes", "count"),
    [(1, 1, 1), (2, 3, 6), ([0, 1], 1, 2), ("0,1,", 2, 4), ("3", 1, 3), ("auto", 1, 1), (-1, 2, 2)],
)
def test_process_count_reads_lightnings_device_forms(devices, nodes, count):
    trainer = OmegaConf.create({"accelerator": "cpu", "devices": devices, "num_nodes": nodes})
    assert process_count(trainer) == count
