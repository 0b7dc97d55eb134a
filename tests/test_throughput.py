"""MFU is one device's model FLOP/s over that device's peak; peaks are looked up by exact GPU name."""

from types import SimpleNamespace

import pytest
import torch

from src.callbacks.throughput import ThroughputLogger
from src.models import SmolLM2, SmolLM2Config
from src.training.device_peaks import bf16_peak_tflops, peak_flops
from tests.training import fast_overrides, logged, run_training, write_text


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),  # SXM
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.5),
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("Tesla T4", None),
        ("NVIDIA H100", None),  # not a name CUDA reports: no guess from a fragment
    ],
)
def test_peaks_are_looked_up_by_exact_device_name(name, tflops):
    assert bf16_peak_tflops(name) == tflops


def test_no_peak_for_cpus_or_fp32():
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None
    assert peak_flops(torch.device("cuda", 0), "32-true") is None


@pytest.mark.parametrize("preset", ["tiny", "smollm2_135m", "smollm2_360m", "smollm2_1.7b"])
@pytest.mark.parametrize("tie", [True, False])
def test_parameter_count_from_the_config_equals_the_built_model(preset, tie):
    config = SmolLM2Config.from_dict({**SmolLM2Config.from_preset(preset).to_dict(), "tie_embeddings": tie})
    with torch.device("meta"):
        assert config.num_parameters() == SmolLM2(config).num_parameters()
    if preset == "smollm2_135m" and tie:
        assert config.num_parameters() == 134_515_008


def logged_by_throughput(world_size: int, peak_tflops: float) -> dict[str, float]:
    """One log interval of the callback: 10 steps of 2 accumulated (4, 65) batches in 2 s, per rank."""
    config = SmolLM2Config.from_preset("tiny")
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        config=config,
        log_dict=lambda metrics, **_: logged.update(metrics),
        log=lambda *a, **k: None,
        tokens_seen=lambda: 0,  # the module's count (tests/test_plan.py)
    )
    trainer = SimpleNamespace(
        global_step=0,
        log_every_n_steps=10,
        max_steps=100,
        accumulate_grad_batches=2,
        world_size=world_size,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="bf16-mixed",
    )
    callback = ThroughputLogger(peak_tflops=peak_tflops)
    batch = torch.zeros(4, 65, dtype=torch.long)
    callback.on_train_start(trainer, module)
    callback.on_train_batch_start(trainer, module, batch, 0)
    callback._t0 -= 2.0  # the interval took 2 s
    trainer.global_step = 10
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    return logged


def test_mfu_is_per_device_and_tokens_per_s_is_global():
    one, two = logged_by_throughput(1, 100.0), logged_by_throughput(2, 100.0)
    tokens_per_rank = 10 * 2 * 4 * 64  # steps x accumulation x rows x tokens per row
    assert one["tokens_per_s"] == pytest.approx(tokens_per_rank / 2.0, rel=1e-3)
    assert two["tokens_per_s"] == pytest.approx(2 * one["tokens_per_s"], rel=1e-3)  # both ranks' tokens
    assert two["tokens_per_s_per_device"] == pytest.approx(one["tokens_per_s"], rel=1e-3)
    flops = SmolLM2Config.from_preset("tiny").training_flops_per_token(64)
    assert one["mfu"] == pytest.approx(one["tokens_per_s"] * flops / 100e12, rel=1e-6)
    assert two["mfu"] == pytest.approx(one["mfu"], rel=1e-3)  # the same work per device: the same MFU


def test_step_time_and_data_wait_come_from_the_gaps_between_batches(monkeypatch):
    """Two steps in 2 s, of which 0.5 s passed between the first batch's end and the second's start;
    the 10 s before the first batch (a step-0 evaluation, samples) are not training time."""
    clock = iter([10.0, 11.0, 11.5, 12.0, 12.0])  # start 1, end 1, start 2, end 2 (log), reset
    monkeypatch.setattr("src.callbacks.throughput.time.perf_counter", lambda: next(clock))
    logged: dict[str, float] = {}
    module = SimpleNamespace(
        config=SmolLM2Config.from_preset("tiny"),
        log_dict=lambda m, **_: logged.update(m),
        tokens_seen=lambda: 0,
    )
    trainer = SimpleNamespace(
        global_step=0,
        log_every_n_steps=2,
        max_steps=100,
        accumulate_grad_batches=1,
        world_size=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="32-true",
    )
    batch = torch.zeros(4, 65, dtype=torch.long)
    callback = ThroughputLogger()
    callback.on_train_start(trainer, module)
    for step in (1, 2):
        callback.on_train_batch_start(trainer, module, batch, 0)
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, batch, 0)
    assert logged["step_time_s"] == pytest.approx(1.0) and logged["data_wait_fraction"] == pytest.approx(0.25)
    assert 0 < logged["peak_memory_gib"] < 1024  # this process's peak resident set


def test_a_peak_given_on_the_command_line_logs_mfu_on_any_device(tmp_path):
    """The README's `callbacks.throughput.peak_tflops=` for a device no table knows (here a CPU)."""
    text = write_text(tmp_path / "input.txt")
    run_training(
        fast_overrides(tmp_path, text, "trainer.max_steps=2", "callbacks.throughput.peak_tflops=0.5")
    )
    tokens_per_s, mfu = logged(tmp_path / "run", "tokens_per_s"), logged(tmp_path / "run", "mfu")
    flops = SmolLM2Config.from_preset("tiny").training_flops_per_token(32)
    assert mfu == pytest.approx(
        {step: tokens_per_s[step] * flops / 0.5e12 for step in tokens_per_s}, rel=1e-6
    )
