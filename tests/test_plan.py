"""The pre-flight plan, the step-counting progress bar, the data counts, and seed 004's phase 2."""

import json
import logging

import pytest
from omegaconf import OmegaConf

from src.data.base import DataSize
from src.data.packing import num_windows
from src.data.tokenizer import load_tokenizer
from src.training.checkpoint import TOKENS_SEEN, read_checkpoint
from src.training.plan import make_plan
from tests.helpers import run_cli
from tests.training import compose_train, fast_overrides, hydra_context, logged, run_training, write_text


@pytest.fixture
def text(tmp_path):
    return write_text(tmp_path / "input.txt")


def training_windows(text, seq_len: int) -> int:
    """Counted by hand: the whole text's tokens and one EOS, 90% of them for training."""
    tokens = len(load_tokenizer(None).encode(text.read_text())) + 1
    return num_windows(int(tokens * 0.9), seq_len)


def test_plan_true_prints_the_epochs_and_a_warning_and_exits(tmp_path):
    text = write_text(tmp_path / "input.txt", words=24_000)  # a validation part of one 2,048-token window
    run = tmp_path / "run"
    result = run_cli(
        "src.train", "model=smollm2_135m", "plan=true", f"data.path={text}", f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run}", "logger=csv",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    epoch_tokens = training_windows(text, 2048) * 2048
    epochs = 5000 * 65536 / epoch_tokens
    assert f"{epoch_tokens:,} training tokens a pass, {epochs:,.1f} epochs" in result.stderr
    assert (
        f"warning: 5,000 steps x 65,536 tokens = 327.7M tokens are {epochs:,.0f} epochs of {text}"
        in result.stderr
    )
    assert "134,515,008" in result.stderr  # SmolLM2-135M's parameters, counted from its config
    assert "11 x 1.6 GB = 17.8 GB" in result.stderr  # 10 step checkpoints + last.ckpt, 12 bytes a parameter
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "train.log"]  # no model, no checkpoint, no log


def test_a_run_saves_its_plan_logs_it_and_counts_windows(tmp_path, text, capsys):
    overrides = fast_overrides(tmp_path, text, "trainer.max_steps=6", "callbacks.progress_bar.refresh_rate=1")
    run_training(overrides)
    run = tmp_path / "run"
    plan = json.loads((run / "plan.json").read_text())
    windows = training_windows(text, 32)
    assert plan["epoch_tokens"] == windows * 32 and plan["tokens_per_step"] == 4 * 32
    assert plan["epochs"] == pytest.approx(6 * 4 / windows)
    assert (plan["first_sample"], plan["first_validation"], plan["first_checkpoint"]) == (0, 0, 5)
    assert plan["checkpoints_kept"] == 2 and plan["warnings"] == []
    size = (run / "checkpoints" / "last.ckpt").stat().st_size  # weights, 2 moments and a little more
    assert plan["checkpoint_bytes"] <= size < 1.05 * plan["checkpoint_bytes"]
    assert OmegaConf.load(run / "csv" / "hparams.yaml").plan.epochs == pytest.approx(plan["epochs"])
    seen = {s: 4.0 * s for s in range(1, 7)}  # each step takes one batch of 4 windows
    assert logged(run, "data/windows_seen") == seen
    assert logged(run, "data/unique_windows") == {s: min(n, windows) for s, n in seen.items()}
    assert logged(run, "data/epochs") == pytest.approx({s: n / windows for s, n in seen.items()})
    bar = capsys.readouterr().out.split("\r")[-1]  # the bar's last drawing: steps, total and times
    assert bar.startswith("step: 100%") and "| 6/6 [" in bar and "<00:00" in bar


def test_a_continuation_from_mid_epoch_counts_steps_to_max_steps(tmp_path, text, capsys):
    """A periodic checkpoint is mid-epoch, where Lightning skips on_train_epoch_start."""
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=6"))
    step_5 = tmp_path / "run" / "checkpoints" / "step_0000005.ckpt"
    capsys.readouterr()
    run_training(
        fast_overrides(
            tmp_path,
            text,
            "trainer.max_steps=7",
            f"ckpt_path={step_5}",
            "callbacks.progress_bar.refresh_rate=1",
        )
    )
    bar = capsys.readouterr().out.split("\r")[-1]
    assert bar.startswith("step: 100%") and "| 7/7 [" in bar and "this run=2/2" in bar


def test_a_continuation_with_another_batch_counts_each_step_at_its_own_size(tmp_path, text):
    """4 steps of 4 windows, then 2 of 2: 20 windows, not 6 x 2 (nor the next run's 24 from 6 x 4)."""
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=4"))
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)[TOKENS_SEEN] == 16 * 32
    run_training(
        fast_overrides(tmp_path, text, "trainer.max_steps=6", "data.batch_size=2", f"ckpt_path={last}")
    )
    windows = {1: 4.0, 2: 8.0, 3: 12.0, 4: 16.0, 5: 18.0, 6: 20.0}
    assert logged(run, "data/windows_seen") == windows
    assert logged(run, "tokens_seen") == {step: 32 * n for step, n in windows.items()}
    assert json.loads((run / "summary.json").read_text())["tokens_seen"] == 20 * 32
    assert read_checkpoint(last)[TOKENS_SEEN] == 20 * 32
    plan = json.loads((run / "plan.json").read_text())
    assert (plan["start_tokens"], plan["tokens_per_step"], plan["total_tokens"]) == (16 * 32, 2 * 32, 20 * 32)


def test_seed_004_phase_2_continues_with_its_own_constant_lr(tmp_path, text, caplog, capsys):
    """README's phase 2 (5,000 steps, then 50 at 3e-5), shrunk to 4 steps, then 2 more."""
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=4"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    phase_2 = ("trainer.max_steps=6", "schedule.kind=constant", "optim.lr=3e-5", f"ckpt_path={last}")
    capsys.readouterr()
    with caplog.at_level(logging.INFO):
        run_training(fast_overrides(tmp_path, text, *phase_2, "callbacks.progress_bar.refresh_rate=1"))
    bar = capsys.readouterr().out.split("\r")[-1]  # the whole run's steps, and this run's
    assert "| 6/6 [" in bar and "this run=2/2" in bar
    lr = logged(tmp_path / "run", "lr")
    assert lr[4] == pytest.approx(3e-3)  # phase 1: the default schedule at its peak
    assert (lr[5], lr[6]) == (pytest.approx(3e-5), pytest.approx(3e-5))
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert (plan["start_step"], plan["lr_first_step"], plan["schedule"]) == (
        4,
        pytest.approx(3e-5),
        "constant",
    )
    assert "learning rate              3e-05 at step 4 (peak 3e-05, constant)" in caplog.text


def test_the_quick_start_does_not_warn_and_three_times_its_steps_does():
    """The default run is 5.3 epochs of tiny Shakespeare, where its val loss still falls."""
    shakespeare = DataSize("data/input.txt", 306_944)  # training tokens of one pass, as printed
    with hydra_context():
        default, longer = compose_train([]), compose_train(["trainer.max_steps=1200"])
    plan = make_plan(default, parameters=1000, tokens_per_step=4096, lr_multiplier=0.0, data=shakespeare)
    assert plan.epochs == pytest.approx(5.34, abs=0.01) and plan.warnings() == []
    (warning,) = make_plan(longer, 1000, 4096, 0.0, shakespeare).warnings()
    assert "1,200 steps x 4,096 tokens = 4.9M tokens are 16 epochs" in warning
    assert "trainer.max_steps=599 is 8 epochs" in warning


def test_a_continuations_milestones_come_after_its_start():
    with hydra_context():
        cfg = compose_train(
            ["model=tiny", "trainer.max_steps=1200", "eval_every=100", "checkpoint_every=500"]
        )
    plan = make_plan(
        cfg,
        parameters=1000,
        tokens_per_step=64,
        lr_multiplier=0.5,
        data=DataSize("s", None),
        start_step=1000,
        start_tokens=1000 * 32,  # the first 1,000 steps had half today's batch
    )
    assert (plan.first_sample, plan.first_validation, plan.first_checkpoint) == (1100, 1100, None)
    assert plan.checkpoints_kept == 2 + 1 and plan.epochs is None and plan.warnings() == []
    assert "1,200 (200 in this run, from step 1,000)" in plan.table()
    assert plan.total_tokens == 1000 * 32 + 200 * 64
    assert "streaming, epochs unknown" in plan.table()
    cfg.callbacks.text_samples.every_n_steps = 0  # never in between: the sample when fit ends
    assert make_plan(cfg, 1000, 64, 0.5, DataSize("s", None), start_step=1000).first_sample == 1200


def test_a_plan_leaves_the_run_it_continues_as_it_was_and_refuses_a_text_too_short(tmp_path, text):
    overrides = fast_overrides(tmp_path, text, "trainer.max_steps=2")
    run_training(overrides)
    run = tmp_path / "run"
    before = {path: path.stat().st_mtime_ns for path in run.rglob("*")}
    last = run / "checkpoints" / "last.ckpt"
    result = run_cli("src.train", *overrides, "trainer.max_steps=4", f"ckpt_path={last}", "plan=true")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 (2 in this run, from step 2)" in result.stderr
    assert {path: path.stat().st_mtime_ns for path in run.rglob("*")} == before  # no record, no log lines
    short = tmp_path / "short.txt"
    short.write_text("Too short.\n")
    other = tmp_path / "other"
    result = run_cli("src.train", *fast_overrides(other, short, "plan=true"))
    assert result.returncode == 2
    assert "the training part has" in result.stderr and "fewer than one window" in result.stderr
    assert not (other / "run").exists()
