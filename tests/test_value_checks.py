"""The values src.train checks at startup, before torch is imported: each bad one is a single
line naming the key, the value and the fix, on the real composed config."""

from __future__ import annotations

import re

import pytest

from src.errors import UserError
from src.training.value_checks import check_values
from tests.training import compose_train, hydra_context


@pytest.fixture(scope="module")
def compose():
    with hydra_context():
        yield lambda overrides: compose_train(["model=tiny", "logger=csv", *overrides])


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.gradient_clip_val=-1", "clip_val must be a finite number >= 0 or null, got -1"),
        ("trainer.gradient_clip_val=foo", "clip_val must be a finite number >= 0 or null, got 'foo'"),
        ("optim.betas=[0.9,1.5]", r"must be two numbers in \[0, 1\), as \[0.9,0.95\], got \[0.9, 1.5\]"),
        ("optim.betas=[0.9,1.0]", r"optim.betas must be two numbers in \[0, 1\).*got \[0.9, 1.0\]"),
        ("optim.betas=[-0.1,0.95]", r"optim.betas must be two numbers in \[0, 1\).*got \[-0.1, 0.95\]"),
        ("optim.betas=[0.9]", r"optim.betas must be two numbers in \[0, 1\).*got \[0.9\]"),
        ("optim.eps=-1", "optim.eps must be a finite number > 0, got -1"),
        ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
        ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
        ("optim.lr=abc", "optim.lr must be a finite number > 0, got 'abc'"),
        ("trainer.precision=bf17", "precision='bf17'; choose one of 16-mixed, 32-true, auto, bf16-mixed"),
        ("trainer.accelerator=foo", "trainer.accelerator='foo'; choose one of auto, cpu, gpu, cuda"),
        ("trainer.num_nodes=0", "trainer.num_nodes must be a positive integer, got 0"),
        ("trainer.devices=abc", r"trainer.devices must be a positive count, -1 \(all\), .*got 'abc'"),
        ("trainer.devices=[]", r"trainer.devices must be a positive count, -1 \(all\), .*got \[\]"),
        ("seed=99999999999999", r"seed must be an integer in \[0, 4294967295\], got 99999999999999"),
        ("data.num_workers=abc", "data.num_workers must be an integer >= 0, got 'abc'"),
        ("data.num_workers=-1", "data.num_workers must be an integer >= 0, got -1"),
        ("spike.window=abc", "spike.window must be a positive integer, got 'abc'"),
        ("spike.k=abc", "spike.k must be a finite number > 0, got 'abc'"),
        ("compile=maybe", "compile must be true or false, got 'maybe'"),
        ("plan=abc", "plan must be true or false, got 'abc'"),
        ("model.tie_embeddings=maybe", "model.tie_embeddings must be true or false, got 'maybe'"),
        ("activation_checkpointing=yes", "activation_checkpointing must be true or false, got 'yes'"),
        ("val_at_start=abc", "val_at_start must be true or false, got 'abc'"),
        ("keep_freed_host_memory=abc", "keep_freed_host_memory must be true or false, got 'abc'"),
        ("trainer.val_check_interval=7", "trainer.val_check_interval follows from eval_every"),
        ("data.val_fraction=0", r"data.val_fraction must be a number in \(0, 1\), got 0"),
        ("tokens_per_step=0", "tokens_per_step must be a positive integer or null, got 0"),
        ("tokens_per_step=1.5", "tokens_per_step must be a positive integer or null, got 1.5"),
        ("callbacks.throughput.peak_tflops=-1", "peak_tflops must be a finite number > 0 or null, got -1"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_in_one_line_naming_it(compose, override, message):
    with pytest.raises(UserError) as failure:
        check_values(compose([override]))
    assert re.search(message, str(failure.value)) and "\n" not in str(failure.value), failure.value


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["trainer.gradient_clip_val=null"],
        ["trainer.gradient_clip_val=0"],
        ["optim.betas=[0,0.999]"],
        ["trainer.devices=auto"],
        ["trainer.devices=-1"],
        ["trainer.devices=[0,1]"],
        ["trainer.devices='0,1'"],
        ["precision=bf16-mixed"],
        ["trainer.accelerator=gpu"],
        [f"seed={2**32 - 1}"],
        ["tokens_per_step=4096"],
        ["compile=true", "model.tie_embeddings=false"],
        ["callbacks.throughput.peak_tflops=989"],
        ["data=cosmopedia_v2"],  # no val_fraction: checked where present
        ["callbacks=none"],
    ],
)
def test_good_values_pass(compose, overrides):
    check_values(compose(overrides))
