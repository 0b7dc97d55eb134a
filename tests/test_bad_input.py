"""Bad input fails early with one line that names the problem and the fix, and damages nothing.

Most cases run in-process (the UserError is what the CLI prints); a few run the real CLI to
hold the contract itself: exit code 2, one `error:` line, no traceback.
"""

from __future__ import annotations

import re

import pytest
import torch

from src.errors import UserError, find_user_error
from tests.data.shards import corrupt_second_row_group, write_shards
from tests.helpers import run_cli
from tests.training import fast_overrides, run_training, stream_overrides, write_text


@pytest.fixture(scope="module")
def trained(module_tmp_path):
    """A 2-step run whose last.ckpt the checkpoint cases start from."""
    tmp = module_tmp_path
    text = write_text(tmp / "input.txt")
    run_training(fast_overrides(tmp, text, "trainer.max_steps=2", "schedule.warmup_steps=1"))
    return tmp, text, tmp / "run" / "checkpoints" / "last.ckpt"


def bad_files(tmp):
    (tmp / "empty.txt").write_text("  \n")
    (tmp / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 50)
    (tmp / "short.txt").write_text("Too short.\n")
    (tmp / "junk.ckpt").write_bytes(b"not a checkpoint at all")
    torch.save({"weights": torch.zeros(2)}, tmp / "foreign.ckpt")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["data.path={tmp}/nope.txt", "data.url=null"], "nope.txt: text file not found; pass data.path"),
        (["data.path={tmp}/empty.txt"], "empty.txt: the file is empty"),
        (["data.path={tmp}/latin1.txt"], r"latin1.txt: not UTF-8 \(byte 3\); convert it with iconv"),
        (["data.path={tmp}/short.txt"], "fewer than one window of seq_len \\+ 1 = 33; use a longer text"),
        (["ckpt_path={tmp}/missing.ckpt"], "missing.ckpt: checkpoint not found; check the path"),
        (["ckpt_path={tmp}/junk.ckpt"], r"junk.ckpt: not a checkpoint \(torch.save writes zip archives"),
        (["ckpt_path={tmp}/foreign.ckpt"], "foreign.ckpt: not a checkpoint written by src.train"),
        (["model.vocab_size=1000"], "tokenizer has 49152 tokens but model.vocab_size=1000; set model.voc"),
        (["data.seq_len=4096"], "data.seq_len=4096 exceeds the model's context of 2048 tokens"),
        (["data.batch_size=0"], "data.batch_size must be a positive integer, got 0"),
        (["trainer.max_steps=-5"], "trainer.max_steps must be a positive integer, got -5"),
        (["data.seq_len=abc"], "data.seq_len must be a positive integer, got 'abc'"),
        (["trainer.accumulate_grad_batches=0"], "accumulate_grad_batches must be a positive integer"),
        (["eval_every=0"], "eval_every must be a positive integer, got 0"),
        (["optim.lr=-1e-3"], "optim.lr must be a finite number > 0, got -0.001"),
        (["optim.weight_decay=-1"], "optim.weight_decay must be a finite number >= 0, got -1"),
        (
            ["trainer.devices=0"],
            "trainer.devices must be a positive count, -1 \\(all\\), a list of indices or auto, got 0",
        ),
        (["data.val_fraction=1.5"], r"data.val_fraction must be a number in \(0, 1\), got 1.5"),
        (["checkpoint_every=-5"], "checkpoint_every must be an integer >= 0, got -5"),
        (["seed=abc"], r"seed must be an integer in \[0, 4294967295\], got 'abc'"),
        (["schedule.warmup_steps=abc"], "schedule.warmup_steps must be an integer >= 0, got 'abc'"),
        (["schedule.total_steps=0"], "schedule.total_steps must be a positive integer or null, got 0"),
        (["schedule.min_lr_ratio=2"], r"schedule.min_lr_ratio must be a number in \[0, 1\] or null, got 2"),
        (["trainer.limit_val_batches=1.5"], r"limit_val_batches must be a count .* a fraction in \[0, 1\]"),
        (["data.path={tmp}"], "is a folder; pass data.path=<a UTF-8 text file>"),
        (["nonfinite=maybe"], "nonfinite must be one of"),
        (
            ["callbacks.layer_health.every_n_steps=3", "trainer.log_every_n_steps=2"],
            "layer_health.every_n_steps=3 is not a multiple of trainer.log_every_n_steps=2",
        ),
        (
            ["callbacks.layer_health.every_n_steps=2", "callbacks.layer_health.histogram_every_n_steps=3"],
            r"histogram_every_n_steps=3 is not a multiple of the health interval \(2 steps\)",
        ),
        (["logger=wandb", "logger.wandb.mode=onlien"], r"logger.wandb.mode='onlien'; choose one of \['auto'"),
        (
            ["kernels=[rms_norm,flash]"],
            "unknown kernels flash; choose from causal_attention, rms_norm, onednn",
        ),
        (["precision=16-mixed"], "precision=16-mixed needs a GPU"),
        (
            ["callbacks.text_samples.temperature=-1"],
            "callbacks.text_samples.temperature=-1: use 0 for greedy",
        ),
        (["callbacks.text_samples.top_p=1.5"], r"callbacks.text_samples.top_p=1.5: use a value in \(0, 1\]"),
        (["callbacks.text_samples.top_k=0"], "callbacks.text_samples.top_k=0: use a positive integer"),
        (["callbacks.text_samples.max_new_tokens=0"], "text_samples.max_new_tokens=0: generate at least 1"),
        (
            ["callbacks.text_samples.top_k=abc"],
            r"text_samples: max_new_tokens, .* must be numbers .*'top_k': 'abc'",
        ),
        (["callbacks.text_samples.every_n_steps=-1"], "text_samples.every_n_steps must be an integer >= 0"),
        (["callbacks.downstream_eval.tasks=[foo]"], "downstream_eval.tasks: unknown task 'foo'; choose from"),
        (
            ["callbacks.downstream_eval.tasks=[local:{tmp}/gone.jsonl]"],
            "tasks: .*gone.jsonl: text file not found",
        ),
        (["kernels=[rms_norm,rms_norm]"], "kernels names rms_norm more than once; name each kernel once"),
        (["paths.output_dir={tmp}/empty.txt/run"], r"cannot write to the run folder .*Not a directory"),
    ],
)
def test_bad_input_is_a_user_error(tmp_path, extra, message):
    text = write_text(tmp_path / "input.txt")
    bad_files(tmp_path)
    overrides = fast_overrides(tmp_path, text, "trainer.max_steps=2", "schedule.warmup_steps=1")
    with pytest.raises(Exception) as failure:  # Hydra's instantiate wraps errors from constructors
        run_training(overrides + [e.format(tmp=tmp_path) for e in extra])
    error = find_user_error(failure.value)
    assert error is not None and re.search(message, str(error)), failure.value


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_gpu_accelerator_without_a_gpu(tmp_path):
    overrides = fast_overrides(tmp_path, write_text(tmp_path / "input.txt"), "trainer.accelerator=gpu")
    with pytest.raises(UserError, match="no CUDA GPU is visible; use trainer=cpu"):
        run_training(overrides)


def test_checkpoint_cases_leave_the_run_intact(trained, tmp_path):
    """Truncated file, max_steps below the step, or a broken data file: the checkpoint, the
    metrics, the plan and the logged config are untouched."""
    tmp, text, last = trained
    run = last.parent.parent
    records = [last, run / "plan.json", run / "csv" / "metrics.csv", run / "csv" / "hparams.yaml"]
    before = [path.read_bytes() for path in records]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(before[0][: len(before[0]) // 2])
    (tmp_path / "short.txt").write_text("Too short.\n")
    cases = [
        ([f"ckpt_path={truncated}"], "truncated.ckpt: not a readable checkpoint, it may be truncated"),
        ([f"ckpt_path={last}", "trainer.max_steps=1"], "max_steps=1 is below the checkpoint's step 2"),
        ([f"ckpt_path={last}", "trainer.max_steps=4", f"data.path={tmp_path}/gone", "data.url=null"], "gone"),
        # Known once the text is tokenized, after the run folder is held.
        ([f"ckpt_path={last}", "trainer.max_steps=4", f"data.path={tmp_path}/short.txt"], "than one window"),
    ]
    for extra, message in cases:
        with pytest.raises(UserError, match=message):
            run_training(fast_overrides(tmp, text, "schedule.warmup_steps=1", *extra))
        assert [path.read_bytes() for path in records] == before


def test_a_continuation_refused_for_its_data_leaves_the_later_rows_where_they_are(tmp_path):
    """From step 2 of a 4-step run: the rows of steps 3 and 4 stay in metrics.csv (a continuation
    that trains would set them aside), since this one cannot train on a text that short."""
    text, short = write_text(tmp_path / "input.txt"), tmp_path / "short.txt"
    short.write_text("Too short.\n")
    every_2 = ("checkpoint_every=2", "schedule.warmup_steps=1", "trainer.max_steps=4")
    run_training(fast_overrides(tmp_path, text, *every_2))
    run = tmp_path / "run"
    csv_files = {path: path.read_bytes() for path in (run / "csv").iterdir()}
    step_2 = run / "checkpoints" / "step_0000002.ckpt"
    with pytest.raises(UserError, match="than one window"):
        run_training(fast_overrides(tmp_path, short, *every_2, f"ckpt_path={step_2}"))
    assert {path: path.read_bytes() for path in (run / "csv").iterdir()} == csv_files


def cli_error(*args: str) -> str:
    """Runs the training CLI, checks the one-line contract, returns the error line."""
    result = run_cli("src.train", *args)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], result.stderr
    return lines[-1]


@pytest.mark.slow
def test_cli_config_errors_are_exactly_one_line(tmp_path):
    """Errors found before training starts are the only line on stderr."""
    for args, message in [
        (["model=nope"], "Could not find 'model/nope'; choose one of smollm2_1.7b, smollm2_135m"),
        (["experiment=null"], "experiment=null cannot drop the recipe; use ~experiment"),
        (
            ["hydra.output_subdir=.hydra"],
            "hydra.output_subdir is fixed: the run writes .hydra/ once it holds",
        ),
        (["trainer.nope=1", "nope=2"], "Could not override 'trainer.nope'; To append to your config use +"),
        ([f"paths.root_dir={tmp_path}/missing.ckpt", f"ckpt_path={tmp_path}/missing.ckpt"], "not found"),
        ([f"paths.root_dir={tmp_path}", "trainer.devices=0"], "trainer.devices must be a positive count"),
        ([f"paths.root_dir={tmp_path}", "trainer.gradient_clip_val=-1"], "clip_val must be a finite"),
        ([f"paths.root_dir={tmp_path}", "model.vocab_size=abc"], "vocab_size must be a positive integer"),
    ]:
        result = run_cli("src.train", *args)
        assert (result.returncode, result.stderr.count("\n")) == (2, 1), result.stderr
        assert message in result.stderr


@pytest.mark.slow
def test_a_refused_launch_leaves_no_run_folder(tmp_path):
    """The fresh run folder is made while Hydra composes the config, before any check."""
    for args in (["trainer.max_stepz=5"], ["seed=abc"], [f"data.path={tmp_path}/missing.txt"]):
        cli_error(f"paths.root_dir={tmp_path}", *args)
    runs = tmp_path / "logs" / "train" / "runs"
    assert runs.is_dir() and not list(runs.iterdir())
    cli_error(f"paths.root_dir={tmp_path}", "run_name=named", "trainer.max_steps=-5")  # a folder Hydra makes
    assert not list(runs.iterdir())
    (runs / "kept").mkdir()  # a folder that was there before the launch stays
    cli_error(f"paths.root_dir={tmp_path}", "run_name=kept", "trainer.max_steps=-5")
    assert [p.name for p in runs.iterdir()] == ["kept"]


def test_a_recipes_settings_for_a_callback_switched_off_are_left_out(tmp_path):
    """experiment=smoke sets text_samples values; callbacks=none removes the callback itself."""
    text = write_text(tmp_path / "input.txt")
    run_training(
        [
            "experiment=smoke", "callbacks=none", "model=tiny", "precision=32-true",
            "trainer.accelerator=cpu", f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}",
            f"data.path={text}", "data.seq_len=32", "data.batch_size=4", "trainer.max_steps=2",
            "trainer.limit_val_batches=1",
        ]
    )  # fmt: skip
    run = tmp_path / "run"
    assert (run / "csv" / "metrics.csv").is_file()
    assert not (run / "checkpoints").exists() and not (run / "samples.jsonl").exists()


def test_a_plan_refuses_a_callback_setting_the_run_would_refuse(tmp_path):
    run = tmp_path / "run"
    line = cli_error("plan=true", "callbacks.layer_health.every_n_steps=15", f"hydra.run.dir={run}")
    assert "every_n_steps=15 is not a multiple of trainer.log_every_n_steps=10" in line
    assert not list(run.rglob("*"))  # no plan, no record: refused before anything is written


def test_a_sweep_of_multi_process_runs_is_refused_in_one_line(tmp_path):
    """Lightning would re-run the `-m` command line for each extra rank, restarting the sweep."""
    line = cli_error(
        "-m", "trainer=ddp", "trainer.accelerator=cpu", "optim.lr=1e-3,3e-3", f"hydra.sweep.dir={tmp_path}"
    )
    assert line.startswith("error: a -m sweep cannot run 2 processes per job")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_cli_error_inside_fit_is_one_line_and_saves_nothing(tmp_path):
    text = write_text(tmp_path / "input.txt")
    bad_files(tmp_path)
    line = cli_error(*fast_overrides(tmp_path, text, f"data.path={tmp_path}/latin1.txt"))
    assert line.startswith("error: ") and "not UTF-8" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.slow
def test_a_shard_failing_mid_training_is_one_line_and_the_run_continues_past_it(tmp_path):
    """Read by a dataloader worker, whose error torch re-raises with the worker's traceback."""
    shards = tmp_path / "shards"
    write_shards(shards)
    corrupt_second_row_group(shards / "train-00002-of-00004.parquet")
    args = stream_overrides(
        tmp_path, shards, "data.num_workers=2", "trainer.max_steps=6", "checkpoint_every=1"
    )
    line = cli_error(*args)
    assert "train-00002-of-00004.parquet: cannot read it (" in line
    assert line.endswith("pass data.skip_bad_files=true to train without it")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    result = run_cli("src.train", *args, f"ckpt_path={last}", "data.skip_bad_files=true")
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"skipping {shards / 'train-00002-of-00004.parquet'}: cannot read it" in log
