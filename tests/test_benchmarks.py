"""The benchmark scripts run end to end on tiny settings and print their comparison tables."""

import importlib
import os
import sys

import pytest
import torch

from benchmarks.common import STEADY_PAGE_FAULTS, Timing, machine_line
from benchmarks.generation import leading_agreement
from benchmarks.step_profile import profiled_self_times
from src.kernels.timing_cache import ISA_LIMITS
from tests.helpers import run_cli

SMALL = {
    "benchmarks.train_step": [
        "--preset", "tiny", "--shapes", "1x32", "--dtypes", "fp32", "--warmup", "0", "--repeats", "1",
        "--pytorch-kernels", "--matmul-size", "256",
    ],
    "benchmarks.generation": [
        "--preset", "tiny", "--new-tokens", "4", "--prompt-len", "4", "--dtypes", "fp32", "--repeats", "1",
        "--pytorch-kernels",
    ],
    "benchmarks.lightning_overhead": [
        "--steps", "3", "--warmup", "1", "--repeats", "1", "--seq-len", "16", "--batch-size", "2",
        "--dtypes", "fp32",
    ],
    "benchmarks.optimizer_step": ["--preset", "tiny", "--warmup", "0", "--repeats", "1"],
    "benchmarks.layer_health": [
        "--model", "tiny", "--batch-size", "2", "--seq-len", "16", "--dtype", "fp32", "--warmup", "0",
        "--steps", "1",
    ],
    "benchmarks.loss": [
        "--preset", "tiny", "--tokens", "64", "--dtypes", "fp32,bf16", "--warmup", "0", "--repeats", "1",
    ],
    "benchmarks.step_profile": [
        "--preset", "tiny", "--shape", "1x32", "--dtype", "bf16", "--warmup", "1", "--steps", "1",
        "--by-shape", "--by-caller",
    ],
    "benchmarks.kernel_ab": [
        "--preset", "tiny", "--shape", "1x32", "--dtype", "fp32", "--a", "",
        "--b", "onednn_linear_torch_wgrad", "--warmup", "0", "--rounds", "1",
    ],
    "benchmarks.upcast_rows": ["--preset", "tiny", "--rows", "1,8", "--warmup", "0", "--repeats", "1"],
    "benchmarks.data_pipeline": [
        "--docs", "60", "--shards", "2", "--seq-len", "64", "--batch-size", "2", "--batches", "3",
        "--workers", "0", "--train-tokens-per-s", "1000",
    ],
}  # fmt: skip


BAD_ARGUMENTS = [
    ("train_step", ["--shapes", "2by128"], "--shapes"),
    ("train_step", ["--dtypes", "fp16"], "--dtypes"),
    ("train_step", ["--repeats", "0"], "--repeats"),
    ("generation", ["--batches", "1,0"], "--batches"),
    ("upcast_rows", ["--rows", "x"], "--rows"),
    ("loss", ["--tokens", "-5"], "--tokens"),
    ("loss", ["--preset", "tiny", "--device", "cuda:99", "--no-keep-freed-host-memory"], "--device"),
    ("lightning_overhead", ["--preset", "nope"], "--preset"),
    ("layer_health", ["--model", "nope"], "--model"),
    ("data_pipeline", ["--workers", "0", "-1"], "--workers"),
    ("step_profile", ["--shape", "2x0"], "--shape"),
    ("kernel_ab", ["--b", "rms_norm", "--rounds", "0"], "--rounds"),
    ("optimizer_step", ["--warmup", "-1"], "--warmup"),
    ("sdpa_backend", ["--dtypes", "fp32,"], "--dtypes"),
    ("lm_eval_crosscheck", ["--text", "/nonexistent/input.txt", "--write-task", "out.jsonl"], "/nonexistent"),
]


@pytest.mark.parametrize(("script", "args", "named"), BAD_ARGUMENTS)
def test_a_bad_argument_is_one_error_line_and_exit_2_before_any_model_is_built(
    script, args, named, monkeypatch, capsys
):
    main = importlib.import_module(f"benchmarks.{script}").main
    monkeypatch.setattr(sys, "argv", [script, *args])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    error = stderr.strip().splitlines()[-1]
    assert "error:" in error and named in error, stderr
    assert "Traceback" not in stderr


@pytest.mark.slow  # each one is a separate process timing real work
@pytest.mark.parametrize("module", sorted(SMALL))
def test_benchmark_prints_a_table_with_its_reference(module):
    result = run_cli(module, *SMALL[module])
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 4, result.stdout  # header, rule, and at least ours + the reference


def test_the_step_profile_throws_away_the_first_profiled_step_and_sums_the_rest():
    ran = []

    def step() -> None:
        ran.append(torch.ones(4).add_(len(ran)))

    self_us, calls, _ = profiled_self_times(step, steps=2, by_shape=True, by_caller=False)
    assert len(ran) == 3  # one thrown away, two kept
    assert calls[("aten::add_", "[[4], [], []]")] == 2
    assert self_us[("aten::add_", "[[4], [], []]")] > 0


def test_generation_counts_the_new_tokens_every_row_agrees_on_before_the_first_difference():
    expected = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert leading_agreement(expected.clone(), expected) == 4
    later = expected.clone()
    later[1, 2], later[0, 3] = 0, 0  # row 1 differs first, at column 2
    assert leading_agreement(later, expected) == 2
    assert leading_agreement(expected.flip(1), expected) == 0


def test_a_timing_keeps_the_calls_that_did_not_page_fault_and_all_where_every_call_did():
    timing = Timing([9.0, 7.0, 12.0, 7.2], [0, 3, 583_652, STEADY_PAGE_FAULTS])
    steady = timing.steady()
    assert steady.seconds == [9.0, 7.0, 7.2] and steady.page_faults == [0, 3, STEADY_PAGE_FAULTS]
    assert steady.median == 7.2  # the faulting 12.0 s call no longer counts
    faulting = Timing([12.0, 11.0], [STEADY_PAGE_FAULTS + 1, 600_000])
    assert faulting.steady() is faulting
    quiet = Timing([1.0, 2.0], [0, 0])
    assert quiet.steady() is quiet


def test_the_machine_line_names_an_instruction_set_limit(monkeypatch):
    for name in ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    cpu = torch.device("cpu")
    assert "ONEDNN" not in machine_line(cpu)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
    assert f"{os.cpu_count()} cores; ONEDNN_MAX_CPU_ISA=AVX512_CORE; torch" in machine_line(cpu)
