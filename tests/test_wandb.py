"""W&B without an account or a network: offline files, one run across a continuation, the fallback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import wandb

from src.errors import UserError
from src.tracking.wandb_logger import RunWandbLogger
from src.training.checkpoint import read_checkpoint
from tests.conftest import REPO_ROOT
from tests.helpers import write_questions
from tests.training import fast_overrides, write_text
from tests.wandb_records import offline_runs

OFFLINE_MESSAGE = "W&B: logging offline because"


@pytest.fixture
def wandb_env(tmp_path, monkeypatch) -> dict[str, str]:
    """No key, no WANDB_MODE, and every W&B / home folder inside tmp_path; also applied in-process."""
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    home = tmp_path / "home"
    values = {
        "HOME": str(home),
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # if anything tried the network, it would fail at once
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return dict(os.environ)


def train_cli(env: dict[str, str], overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "src.train", *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_offline_run_and_its_continuation_are_one_wandb_run(tmp_path, wandb_env):
    text = write_text(tmp_path / "input.txt")
    questions = write_questions(tmp_path / "questions.jsonl", count=4)
    common = [
        "callbacks.text_samples.every_n_steps=2",
        f"callbacks.downstream_eval.tasks=['local:{questions}']",
        "eval_every=1",  # the validation after step 1 and the one before training: two steps
        "logger.wandb.group=grp",
        "logger.wandb.tags=[cpu]",
    ]
    first = [o for o in fast_overrides(tmp_path, text, *common) if o != "logger=csv"]
    result = train_cli(wandb_env, [*first, "logger=wandb", "trainer.max_steps=6"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count(OFFLINE_MESSAGE) == 1
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    result = train_cli(wandb_env, [f"ckpt_path={last}", "trainer.max_steps=10"])
    assert result.returncode == 0, result.stderr[-3000:]

    first_run, second_run = offline_runs(run_dir)  # both under <run>/wandb/
    run_id = read_checkpoint(last)["wandb_run_id"]
    for part in (first_run, second_run):
        assert part.folder.name.endswith(f"-{run_id}")
        assert (part.run.run_id, part.run.display_name, part.run.run_group) == (run_id, "run", "grp")
        assert list(part.run.tags) == ["cpu"]

    config = first_run.config
    assert config["model"]["hidden_size"] == 64 and config["trainer"]["max_steps"] == 6
    assert config["num_parameters"] > 3_000_000 and config["tokenizer"].endswith("smollm2-tokenizer")
    metrics = {"train/loss", "val/loss", "val/ppl", "lr", "grad_norm", "tokens_seen", "tokens_per_s"}
    assert metrics | {"samples", "eval/questions/acc_norm", "eval/table"} <= set(first_run.summary)
    assert second_run.config["trainer"]["max_steps"] == 10

    def steps(part, key: str) -> list[int]:
        return [row["trainer/global_step"] for row in part.history if key in row]

    # Every row at the optimizer step it belongs to, as summary.json and the checkpoints count.
    assert steps(first_run, "train/loss") == list(range(1, 7)) and steps(second_run, "train/loss") == [
        7,
        8,
        9,
        10,
    ]
    assert steps(first_run, "val/loss") == list(range(7)) and steps(second_run, "val/loss") == [7, 8, 9, 10]
    summary = json.loads((run_dir / "summary.json").read_text())
    val_rows = first_run.history + second_run.history
    assert {
        row["trainer/global_step"]: row["val/loss"] for row in val_rows if "val/loss" in row
    } == pytest.approx({int(step): loss for step, loss in summary["val/loss_by_step"].items()})
    assert steps(first_run, "eval/questions/acc_norm") == list(range(7))
    # W&B's own step is the row's, and the continuation rewinds to what its checkpoint holds
    # (steps 0..6), which `wandb sync` applies.
    for part in (first_run, second_run):
        assert all(
            row["_step"] == row["trainer/global_step"] for row in part.history if "trainer/global_step" in row
        )
    assert (second_run.run.branch_point.run, second_run.run.branch_point.value) == (run_id, 6)
    assert {"val/loss_best", "val/loss_best_step", "train/loss_last", "wall_time_s"} <= set(
        second_run.summary
    )
    first_rows, second_rows = first_run.sample_rows, second_run.sample_rows
    assert {row[0] for row in first_rows} == {0, 2, 4, 6} and {row[0] for row in second_rows} == {8, 10}
    assert all(prompt in ("ROMEO:", "The king said") and completion for _, prompt, completion in first_rows)


def test_key_without_server_falls_back_offline_once(tmp_path, wandb_env, monkeypatch):
    """With a key but no reachable server, `auto` gives up after init_timeout and logs offline."""
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    modes, names, messages, offline_run = [], [], [], object()

    def fake_init(**kwargs):
        modes.append(kwargs["mode"])
        names.append(kwargs["name"])
        if kwargs["mode"] == "online":
            raise wandb.errors.CommError("context deadline exceeded")
        return offline_run

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setattr(wandb, "teardown", lambda: modes.append("teardown"))
    monkeypatch.setattr("src.tracking.wandb_logger.rank_zero_info", messages.append)
    logger = RunWandbLogger(save_dir=str(tmp_path / "run"), mode="auto", init_timeout=1, id="abcd1234")
    assert logger.experiment is offline_run and logger.experiment is offline_run
    assert modes == ["online", "teardown", "offline"]
    assert len(messages) == 1 and "the W&B server did not answer (context deadline exceeded)" in messages[0]
    assert "wandb sync" in messages[0] and names == ["run", "run"]  # the run folder's name

    explicit = RunWandbLogger(save_dir=str(tmp_path / "run"), mode="online", id="abcd1234")
    with pytest.raises(UserError, match="could not start an online run"):
        _ = explicit.experiment


@pytest.mark.parametrize("env_mode", [None, "offline"])
def test_unknown_mode_is_a_user_error_whatever_wandb_mode_says(tmp_path, wandb_env, monkeypatch, env_mode):
    if env_mode:
        monkeypatch.setenv("WANDB_MODE", env_mode)
    with pytest.raises(UserError, match="choose one of"):
        RunWandbLogger(save_dir=str(tmp_path), mode="onlien")


def test_histograms_reach_wandb_at_the_trainer_step(tmp_path, wandb_env, monkeypatch):
    logged: list[tuple[dict, int]] = []
    run = SimpleNamespace(log=lambda values, step: logged.append((values, step)))
    monkeypatch.setattr(wandb, "init", lambda **kwargs: run)
    logger = RunWandbLogger(save_dir=str(tmp_path), mode="offline", id="abcd1234")
    logger.log_histograms({"health/grad_histogram/embed": ([1.0, 3.0], [-2.0, -1.0, 0.0])}, step=9)
    ((values, step),) = logged
    histogram = values["health/grad_histogram/embed"]
    assert step == 9 and values["trainer/global_step"] == 9
    assert histogram.histogram == [1.0, 3.0] and histogram.bins == [-2.0, -1.0, 0.0]
