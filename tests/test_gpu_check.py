"""The GPU check: its --dry-run runs every step on the CPU, and its GPU commands compose.

GPU time comes in one short lease, so what can fail before a GPU is reached is checked
here: the script end to end on the tiny model, and the GPU run's own `src.train`
overrides (the 135M model, its shapes) through the same config checks a run makes first.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import hydra
import pytest

from benchmarks import gpu_check, gpu_steps
from benchmarks.gpu_check import STEPS, Checker, Step, run_step
from src.training.config_checks import check_run_config
from src.training.global_batch import resolve_global_batch
from src.training.overrides import override_key
from tests.helpers import run_cli
from tests.training import compose_train, hydra_context, write_text


class Recorded(Exception):
    pass


def first_command(step, tmp_path) -> list[str]:
    """The first command a step of the GPU run would start, recorded instead of run."""
    calls = []

    def record(name: str, *args: str) -> str:
        calls.append(list(args))
        raise Recorded

    ctx = gpu_steps.Context(
        plan=gpu_steps.GPU, work=tmp_path, text=tmp_path / "input.txt", cuda=True, python=record
    )
    with pytest.raises(Recorded):
        step(ctx)
    return calls[0]


@pytest.mark.parametrize(
    "step, seq_len, batch_size, accumulation",
    [(gpu_steps.sync_census, 512, 8, 2), (gpu_steps.train_run, 2048, 8, 4), (gpu_steps.fsdp_run, 512, 8, 1)],
)
def test_the_gpu_runs_training_commands_pass_the_config_checks(
    step, seq_len, batch_size, accumulation, tmp_path
):
    command = first_command(step, tmp_path)
    assert command[:2] == ["-m", "src.train"]
    overrides = command[2:]
    [data_path] = [o.partition("=")[2] for o in overrides if o.startswith("data.path=")]
    write_text(Path(data_path))  # the GPU machine's copy of tiny Shakespeare
    with hydra_context():
        cfg = compose_train(overrides)
        model_config = hydra.utils.instantiate(cfg.model)
        check_run_config(cfg, model_config)
        batch = resolve_global_batch(cfg, {override_key(o) for o in overrides})
    assert model_config.hidden_size == 576  # smollm2_135m
    assert (cfg.data.seq_len, cfg.data.batch_size, batch.accumulation) == (seq_len, batch_size, accumulation)
    assert cfg.trainer.accelerator != "cpu"


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    report = tmp_path / "report.md"
    args = ("--dry-run", f"--out={report}", f"--work={tmp_path}")
    result = run_cli("benchmarks.gpu_check", *args, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    statuses = re.findall(r"^\| (\d) \| (.+?) \| (.+?) \| \d+ \|$", text, flags=re.MULTILINE)
    assert [(int(n), title, status) for n, title, status in statuses] == [
        (n, step.title, "ok") for n, step in enumerate(STEPS, 1)
    ], text
    for n, step in enumerate(STEPS, 1):
        assert f"## {n}. {step.title}" in text
    assert "| mode | dry run on the CPU" in text
    assert "**NOT met**" not in text  # a CPU run claims no GPU target, either way
    assert text.count("skipped: no CUDA") >= 7  # census, train step (3), generation, attention (2), loss
    assert "zero host reads in the quiet steps [1, 2, 4, 5, 7, 8, 10, 11] (0): met" in text


def test_gpu_tests_report_the_tests_that_ended_when_pytest_was_cut_off():
    cut_off = "collected 3 items\n\ntests/a.py::test_x PASSED [ 33%]\ntests/b.py::test_y FAILED [ 66%]\n"
    assert gpu_steps.pytest_results(cut_off).splitlines() == [
        "tests/a.py::test_x PASSED [ 33%]",
        "tests/b.py::test_y FAILED [ 66%]",
    ]
    summary = "=== short test summary info ===\nPASSED tests/a.py::test_x\nFAILED tests/b.py::test_y\n"
    finished = cut_off + summary
    assert gpu_steps.pytest_results(finished).splitlines()[1:] == [
        "PASSED tests/a.py::test_x",
        "FAILED tests/b.py::test_y",
    ]


def test_a_step_that_fails_reading_its_results_keeps_what_its_command_printed(tmp_path):
    def misread(ctx: gpu_steps.Context) -> str:
        out = ctx.python("probe", "-c", "print('tokens/s 123,456')")
        raise ValueError(f"no table in {out!r}")

    checker = Checker(tmp_path)
    ctx = gpu_steps.Context(
        plan=gpu_steps.DRY_RUN, work=tmp_path, text=tmp_path / "input.txt", cuda=False, python=checker.python
    )
    step = Step("misread", misread, gpu_cap_s=60)
    run_step(step, ctx, checker, deadline=time.monotonic() + 60)
    assert step.status.startswith("error: ValueError: no table in")
    assert "tokens/s 123,456" in step.body


def test_a_failed_command_hands_the_step_all_it_printed(tmp_path):
    checker = Checker(tmp_path, deadline=time.monotonic() + 60)
    lines = "".join(f"tests/t.py::test_{i} PASSED\\n" for i in range(40))
    with pytest.raises(gpu_steps.StepFailed) as failed:
        checker.python("fails", "-c", f"print('{lines}', end=''); raise SystemExit(3)")
    assert failed.value.status == "failed: its command 1 exited 3"
    assert failed.value.stdout.splitlines() == [f"tests/t.py::test_{i} PASSED" for i in range(40)]
    assert len(failed.value.output.splitlines()) < 40  # the report's excerpt is only the end


@pytest.mark.parametrize("steps", ["99", "0,2", "two", ","])
def test_steps_that_do_not_exist_are_refused(steps, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gpu_check", "--dry-run", "--steps", steps])
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main()
    assert exit_.value.code == 2 and "give step numbers from 1 to 8" in capsys.readouterr().err
