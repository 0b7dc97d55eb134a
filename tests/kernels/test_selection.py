"""Which CPU kernels a run keeps: decisions from injected timings, the timing cache, the rule."""

from __future__ import annotations

import dataclasses
import errno
import functools
import json
import os
import threading
import time

import pytest
import torch
from torch import nn

from src.errors import UserError
from src.kernels import KERNELS, applied_kernels, converter, timing_cache
from src.kernels.packed_linear import PackedLinear
from src.kernels.probes import (
    DECODING_WEIGHT_BYTES,
    Probe,
    Workload,
    _decoding_shapes,
    _layer_and_head_shapes,
)
from src.kernels.selection import (
    MARGIN,
    MIN_ROUNDS,
    KernelRecord,
    choose_kernels,
    kept,
    rule_keeps,
    summary,
    time_pair,
)
from src.kernels.timing_cache import FILE_NAME, ISA_LIMITS, TimingCache, recorded_here, this_machine
from src.models import SmolLM2, SmolLM2Config
from src.serving.inference import ready_for_inference
from src.training import hardware

TINY = SmolLM2Config.from_preset("tiny")
TRAINING_KERNELS = (
    "causal_attention",
    "rms_norm",
    "onednn_linear",
    "onednn_linear_torch_wgrad",
)  # conf/train.yaml's that act in fp32; packed_linear is for inference, the upcast kernels for bf16
FP32_TRAINING = Workload(TINY, 4, 32, torch.float32, training=True)
BF16_TRAINING = Workload(TINY, 4, 32, torch.bfloat16, training=True)
FP32_DECODING = Workload(TINY, 1, 32, torch.float32, training=False)
BF16_DECODING = Workload(TINY, 1, 32, torch.bfloat16, training=False)
INTEL_AMX = ("GenuineIntel", 6, {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
INTEL_AVX512 = ("GenuineIntel", 6, {"avx2", "avx512f"})
ZEN2 = ("AuthenticAMD", 23, {"avx2"})
ZEN3_AVX2 = ("AuthenticAMD", 25, {"avx2"})
ZEN4 = ("AuthenticAMD", 25, {"avx2", "avx512f", "avx512_bf16"})
ZEN5 = ("AuthenticAMD", 26, {"avx2", "avx512f", "avx512_bf16"})


class FakeTimer:
    """Returns the given (kernel s, PyTorch s) per call, in call order; counts calls. Each
    probed kernel is timed twice (two series): `steady` gives both the same timing."""

    def __init__(self, *timings: tuple[float, float]) -> None:
        self.timings, self.calls = list(timings), 0

    @classmethod
    def steady(cls, *timings: tuple[float, float]) -> FakeTimer:
        return cls(*(timing for timing in timings for _series in range(2)))

    @property
    def kernels_timed(self) -> int:
        return self.calls // 2

    def __call__(self, _probe) -> tuple[float, float]:
        self.calls += 1
        return self.timings.pop(0)


class OneRealSeries:
    """`time_pair` once per probed kernel, its timing read for both series: real timings
    whose series cannot disagree, so that whether a run caches does not depend on the load."""

    def __init__(self) -> None:
        self.calls, self.timing = 0, (0.0, 0.0)

    def __call__(self, pair) -> tuple[float, float]:
        self.calls += 1
        if self.calls % 2:  # a kernel's first series
            self.timing = time_pair(pair)
        return self.timing


def sleeping_probe(kernel_s: float, pytorch_s: float) -> tuple[Probe, list[str]]:
    """A probe whose two sides take about the given seconds; the list records each call."""
    calls: list[str] = []

    def side(name: str, seconds: float):
        return lambda: calls.append(name) or time.sleep(seconds)

    return Probe(side("kernel", kernel_s), side("pytorch", pytorch_s)), calls


def test_a_series_ends_after_one_round_only_when_one_side_is_twice_as_fast():
    lopsided, calls = sleeping_probe(0.002, 0.03)  # 15x faster: decided at once
    kernel_s, pytorch_s = time_pair(lopsided)
    assert calls == ["kernel", "pytorch"] * 2  # a warm-up, then one round
    assert kernel_s >= 0.002 and pytorch_s >= 0.03
    close, calls = sleeping_probe(0.04, 0.03)  # 1.33x slower: timed on
    time_pair(close)
    assert calls.count("kernel") == calls.count("pytorch") >= 1 + MIN_ROUNDS


def test_a_kernel_is_kept_only_when_faster_than_pytorch_by_the_margin(tmp_path):
    barely = 1 - MARGIN / 2  # inside the noise margin: PyTorch's op is kept
    timer = FakeTimer.steady((0.5, 1.0), (barely, 1.0), (1.4, 1.0), (0.9, 1.0))
    decisions = choose_kernels(KERNELS, FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert [d.kernel for d in decisions] == list(KERNELS)
    assert kept(decisions) == ["causal_attention", "onednn_linear_torch_wgrad"]
    assert [d.ratio for d in decisions] == [0.5, barely, 1.4, 0.9, None, None, None]
    assert decisions[4].reason == "acts in inference only"  # packed_linear, not timed
    assert [d.reason for d in decisions[5:]] == ["acts on bf16 only"] * 2  # the upcast kernels


def test_kernels_that_cannot_act_on_the_workload_are_dropped_without_timing(tmp_path):
    timer = FakeTimer.steady((0.5, 1.0), (0.5, 1.0), (0.4, 1.0), (0.5, 1.0))
    decisions = choose_kernels(KERNELS, BF16_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert kept(decisions) == ["rms_norm", "upcast_attention", "upcast_linear"]
    assert decisions[0].reason == "upcast_attention is faster"  # its rival for the attention module
    assert [d.reason for d in decisions[2:4]] == ["acts on fp32 only"] * 2 and timer.kernels_timed == 4

    decoding = Workload(TINY, 1, 1, torch.float32, training=False)
    decisions = choose_kernels(
        KERNELS, decoding, cache=TimingCache(tmp_path), timer=FakeTimer.steady((0.5, 1.0))
    )
    assert kept(decisions) == ["onednn_linear"]
    assert [d.reason for d in decisions[:2]] + [d.reason for d in decisions[3:]] == [
        "unused by cached decoding",
        "acts only when gradients are wanted",
        "onednn_linear without gradients",
        "acts on bf16 only",
        "acts on bf16 only",
        "acts on bf16 only",
    ]


def test_policy_always_keeps_every_candidate_and_a_gpu_run_keeps_none(tmp_path):
    timer = FakeTimer()
    always = choose_kernels(KERNELS, FP32_TRAINING, "always", TimingCache(tmp_path), timer)
    assert kept(always) == ["causal_attention", "rms_norm", "onednn_linear"]  # one kernel per module type
    assert [d.reason for d in always[3:]] == [
        "onednn_linear is named first",
        "acts in inference only",
        "acts on bf16 only",
        "acts on bf16 only",
    ]
    assert (
        kept(choose_kernels(KERNELS, FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer, on_cpu=False))
        == []
    )
    assert timer.calls == 0 and not (tmp_path / FILE_NAME).exists()
    with pytest.raises(UserError, match="kernels_policy='fastest': use measure .* or always"):
        choose_kernels(KERNELS, FP32_TRAINING, "fastest")


def test_a_compiled_run_times_only_the_kernels_that_act_in_a_graph(tmp_path):
    compiled = dataclasses.replace(BF16_TRAINING, compiled=True)
    assert compiled.key() == BF16_TRAINING.key()  # what is timed is the eager kernel either way
    timer = FakeTimer.steady((0.5, 1.0), (0.6, 1.0))  # causal_attention, upcast_attention
    decisions = choose_kernels(KERNELS, compiled, cache=TimingCache(tmp_path), timer=timer)
    assert timer.kernels_timed == 2 and kept(decisions) == ["causal_attention"]
    reasons = {d.kernel: d.reason for d in decisions if not d.keep}
    assert reasons["upcast_attention"] == "causal_attention is faster"
    assert {reasons[k] for k in ("rms_norm", "onednn_linear", "packed_linear", "upcast_linear")} == {
        "steps aside under torch.compile"
    }


def test_policy_always_drops_kernels_that_cannot_act_so_that_a_rival_that_can_takes_the_module(tmp_path):
    """In bf16 the fp32-only oneDNN linears, named first, must not keep the upcast linear out."""
    always = choose_kernels(KERNELS, BF16_TRAINING, "always", TimingCache(tmp_path), FakeTimer())
    assert kept(always) == ["causal_attention", "rms_norm", "upcast_linear"]
    reasons = {d.kernel: d.reason for d in always if not d.keep}
    assert reasons == {
        "onednn_linear": "acts on fp32 only",
        "onednn_linear_torch_wgrad": "acts on fp32 only",
        "packed_linear": "acts in inference only",
        "upcast_attention": "causal_attention is named first",
    }


def test_of_two_kept_kernels_for_the_same_layers_the_faster_stays_and_the_other_says_why(tmp_path):
    rivals = ["onednn_linear", "onednn_linear_torch_wgrad"]
    timer = FakeTimer.steady((0.93, 1.0), (0.9, 1.0))
    decisions = choose_kernels(rivals, FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert kept(decisions) == ["onednn_linear_torch_wgrad"]
    assert decisions[0].describe() == "onednn_linear 0.93x (onednn_linear_torch_wgrad is faster)"
    again = choose_kernels(rivals, FP32_TRAINING, cache=TimingCache(tmp_path), timer=FakeTimer())
    assert kept(again) == ["onednn_linear_torch_wgrad"]
    assert again[0].describe() == "onednn_linear 0.93x (cached; onednn_linear_torch_wgrad is faster)"


def test_timings_are_cached_per_workload_and_read_back_by_the_next_run(tmp_path):
    first = choose_kernels(
        ["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=FakeTimer.steady((0.5, 1.0))
    )
    timer = FakeTimer()
    again = choose_kernels(["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert timer.calls == 0 and again[0].cached and not first[0].cached
    assert (again[0].keep, again[0].ratio) == (first[0].keep, first[0].ratio) == (True, 0.5)

    longer = Workload(TINY, 4, 64, torch.float32, training=True)  # other shapes: measured again
    timer = FakeTimer.steady((2.0, 1.0))
    assert kept(choose_kernels(["rms_norm"], longer, cache=TimingCache(tmp_path), timer=timer)) == []
    assert timer.kernels_timed == 1
    assert len(json.loads((tmp_path / FILE_NAME).read_text())) == 2


def test_two_series_that_agree_are_cached_as_the_best_time_of_each_side(tmp_path):
    timer = FakeTimer(
        (0.6, 1.0), (0.5, 1.2),  # rms_norm: 0.60x then 0.42x, both kept
        (1.3, 1.0), (1.5, 0.9),  # causal_attention: 1.30x then 1.67x, both dropped
    )  # fmt: skip
    names = ["rms_norm", "causal_attention"]
    decisions = choose_kernels(names, FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert kept(decisions) == ["rms_norm"] and timer.calls == 4
    assert [d.ratio for d in decisions] == [0.5 / 1.0, 1.3 / 0.9]
    cache = TimingCache(tmp_path)
    assert cache.get("rms_norm", FP32_TRAINING.key()) == (0.5, 1.0)
    assert cache.get("causal_attention", FP32_TRAINING.key()) == (1.3, 0.9)


@pytest.mark.parametrize(
    ("third", "keep", "cached"),
    [((0.9, 1.0), True, (0.85, 1.0)), ((1.2, 1.0), False, (1.05, 1.0))],
    ids=["third_keeps", "third_drops"],
)
def test_two_series_that_disagree_are_settled_by_a_third_and_the_decision_is_cached(
    tmp_path, monkeypatch, third, keep, cached
):
    monkeypatch.setattr("src.kernels.selection._cpu_identity", lambda: INTEL_AMX)  # the rule plays no part
    timer = FakeTimer((0.85, 1.0), (1.05, 1.0), third)  # 0.85x keeps, 1.05x drops: a third decides
    decisions = choose_kernels(["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert timer.calls == 3 and kept(decisions) == (["rms_norm"] if keep else [])
    assert TimingCache(tmp_path).get("rms_norm", FP32_TRAINING.key()) == cached  # the two that agree

    # The next run (a continuation) reads the decision: the same kernels, so the same numbers.
    again = choose_kernels(["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=FakeTimer())
    assert again[0].cached and kept(again) == kept(decisions)


@pytest.mark.parametrize("machine", ["another CPU | torch 2.13.0+cpu", "same CPU | torch 2.14.0+cpu"])
def test_timings_of_another_cpu_or_torch_version_are_not_used(tmp_path, machine):
    cache = TimingCache(tmp_path, machine="same CPU | torch 2.13.0+cpu")
    choose_kernels(["rms_norm"], FP32_TRAINING, cache=cache, timer=FakeTimer.steady((0.5, 1.0)))
    timer = FakeTimer.steady((2.0, 1.0))
    decisions = choose_kernels(["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path, machine), timer=timer)
    assert timer.kernels_timed == 1 and kept(decisions) == []


def test_a_continuation_on_this_machine_keeps_what_its_checkpoint_kept_whatever_the_cache_says(tmp_path):
    """The cache says every kernel loses (it may have been re-measured or deleted since the
    checkpoint): the continued run's record decides, without a timing."""
    names = list(TRAINING_KERNELS)
    choose_kernels(
        names, FP32_TRAINING, cache=TimingCache(tmp_path), timer=FakeTimer.steady(*[(2.0, 1.0)] * len(names))
    )
    record = KernelRecord.from_dict(KernelRecord.of(["rms_norm", "onednn_linear"], FP32_TRAINING).to_dict())
    timer = FakeTimer()
    decisions = choose_kernels(
        names, FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer, continued=record
    )
    assert timer.calls == 0 and kept(decisions) == ["rms_norm", "onednn_linear"]
    assert "as the continued run" in summary(decisions, FP32_TRAINING)
    # A candidate the continuation drops (kernels=[...] given again) stays dropped.
    assert kept(choose_kernels(["rms_norm"], FP32_TRAINING, timer=timer, continued=record)) == ["rms_norm"]
    assert kept(choose_kernels(["causal_attention"], FP32_TRAINING, timer=timer, continued=record)) == []


@pytest.mark.parametrize("changed", ["machine", "workload"])
def test_a_checkpoints_kernels_from_another_machine_or_workload_are_measured_again(tmp_path, changed):
    """Kernels that won on another CPU (or other shapes) may lose here; bit-exactness across CPUs
    is not on offer anyway, their matmuls round differently."""
    record = KernelRecord.of(["rms_norm"], FP32_TRAINING)
    if changed == "machine":
        record = KernelRecord(record.kept, "another CPU | torch 2.13.0+cpu", record.workload)
    else:
        record = KernelRecord.of(["rms_norm"], Workload(TINY, 8, 32, torch.float32, training=True))
    timer = FakeTimer.steady((2.0, 1.0))
    decisions = choose_kernels(
        ["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer, continued=record
    )
    assert timer.kernels_timed == 1 and kept(decisions) == []


def test_always_and_off_the_cpu_ignore_the_checkpoints_kernels(tmp_path):
    record = KernelRecord.of([], FP32_TRAINING)
    always = choose_kernels(["rms_norm"], FP32_TRAINING, "always", TimingCache(tmp_path), continued=record)
    assert kept(always) == ["rms_norm"]
    keeps_it = KernelRecord.of(["rms_norm"], FP32_TRAINING)
    off_cpu = choose_kernels(["rms_norm"], FP32_TRAINING, on_cpu=False, continued=keeps_it)
    assert kept(off_cpu) == []


def test_this_machine_names_the_cpu_and_the_torch_version(monkeypatch):
    before = this_machine()
    assert torch.__version__ in before
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    assert this_machine() != before and this_machine().endswith("torch 9.9.9")


def test_cpus_of_one_model_name_are_told_apart_by_family_model_and_instruction_set(monkeypatch):
    """Cloud VMs name Zen 2 to Zen 5 all "AMD EPYC": a cache shared by such nodes must not
    lend one's timings to another. A record saved before names the model alone."""
    cpuinfo = {"model name": "AMD EPYC", "cpu family": "25", "model": "1", "flags": "fpu avx avx2 fma"}
    for module in (timing_cache, hardware):  # the model name is read in one, the flags in the other
        monkeypatch.setattr(module, "first_cpu_fields", lambda: dict(cpuinfo))
    zen3 = this_machine()
    assert zen3.startswith("AMD EPYC (family 25 model 1, avx2) | torch ")
    cpuinfo.update({"model": "17", "flags": "avx2 avx512f avx512_bf16"})
    zen4 = this_machine()
    assert zen4.startswith("AMD EPYC (family 25 model 17, avx512_bf16) | ") and zen4 != zen3
    cpuinfo["flags"] = "avx2"  # the same CPU with AVX-512 hidden by its hypervisor
    assert this_machine() not in (zen3, zen4)
    assert recorded_here(this_machine()) and not recorded_here(zen3)
    assert recorded_here(f"AMD EPYC | torch {torch.__version__}")  # a record written before
    assert not recorded_here("Intel(R) Xeon(R) Processor | torch 2.13.0+cpu")


def test_an_instruction_set_limit_is_another_machine(monkeypatch):
    for name in ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)
    full = this_machine()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    assert this_machine() == f"{full} | ONEDNN_MAX_CPU_ISA=AVX2 | ATEN_CPU_CAPABILITY=avx2"


def test_an_unreadable_cache_is_empty_and_an_unwritable_one_keeps_timings_for_the_process(tmp_path):
    (tmp_path / FILE_NAME).write_text("{not json")
    cache = TimingCache(tmp_path)
    choose_kernels(["rms_norm"], FP32_TRAINING, cache=cache, timer=FakeTimer.steady((0.5, 1.0)))
    assert cache.saved and len(json.loads((tmp_path / FILE_NAME).read_text())) == 1

    blocked = tmp_path / "a_file"
    blocked.write_text("")
    cache = TimingCache(blocked / "cache")  # its folder cannot be created
    assert kept(
        choose_kernels(["rms_norm"], FP32_TRAINING, cache=cache, timer=FakeTimer.steady((0.5, 1.0)))
    ) == ["rms_norm"]
    assert not cache.saved and cache.get("rms_norm", FP32_TRAINING.key()) == (0.5, 1.0)
    (decision,) = choose_kernels(
        ["rms_norm"], FP32_TRAINING, cache=TimingCache(blocked / "cache"), timer=FakeTimer.steady((0.5, 1.0))
    )
    assert decision.describe() == (
        f"rms_norm 0.50x (not cached: {cache.path} cannot be written, measured at every start)"
    )


@pytest.mark.parametrize("content", ["[1, 2]", "null", '"text"'])
def test_a_cache_of_another_shape_is_empty_and_bad_entries_are_measured_again(tmp_path, content):
    (tmp_path / FILE_NAME).write_text(content)
    assert TimingCache(tmp_path).entries == {}
    good = TimingCache(tmp_path).key("rms_norm", FP32_TRAINING.key())
    broken = [("causal_attention", [0.1]), ("onednn_linear", [0.1, 0]), ("packed_linear", ["a", "b"])]
    bad = {TimingCache(tmp_path).key(name, FP32_TRAINING.key()): value for name, value in broken}
    (tmp_path / FILE_NAME).write_text(json.dumps({good: [0.5, 1.0], **bad, "other": {"x": 1}}))
    assert TimingCache(tmp_path).entries == {good: [0.5, 1.0]}


def test_timings_are_kept_per_thread_count(tmp_path):
    threads = torch.get_num_threads()
    cache = TimingCache(tmp_path)
    cache.put("rms_norm", FP32_TRAINING.key(), (0.5, 1.0))
    try:
        torch.set_num_threads(threads + 1)
        assert TimingCache(tmp_path).get("rms_norm", FP32_TRAINING.key()) is None
    finally:
        torch.set_num_threads(threads)
    assert TimingCache(tmp_path).get("rms_norm", FP32_TRAINING.key()) == (0.5, 1.0)


def test_a_run_that_waited_for_another_measuring_reads_its_timings_instead(tmp_path):
    """Two runs starting at once: the second measures nothing the first measured."""
    first, second = TimingCache(tmp_path), TimingCache(tmp_path)
    waited: list[tuple[float, float] | None] = []

    def second_run() -> None:
        with second.measuring():
            waited.append(second.get("rms_norm", FP32_TRAINING.key()))

    with first.measuring():
        thread = threading.Thread(target=second_run)
        thread.start()
        time.sleep(0.3)
        assert waited == []  # blocked while the first measures
        first.put("rms_norm", FP32_TRAINING.key(), (0.5, 1.0))
    thread.join(timeout=10)
    assert waited == [(0.5, 1.0)]


def test_timings_of_an_earlier_revision_of_a_kernel_are_measured_again(tmp_path, monkeypatch):
    """A kernel whose code changed may now win or lose where its old code did not."""
    choose_kernels(
        ["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=FakeTimer.steady((0.5, 1.0))
    )
    swaps = converter._SWAPS
    monkeypatch.setitem(
        swaps, "rms_norm", swaps["rms_norm"]._replace(revision=swaps["rms_norm"].revision + 1)
    )
    timer = FakeTimer.steady((2.0, 1.0))
    again = choose_kernels(["rms_norm"], FP32_TRAINING, cache=TimingCache(tmp_path), timer=timer)
    assert timer.kernels_timed == 1 and not again[0].cached and kept(again) == []
    assert len(json.loads((tmp_path / FILE_NAME).read_text())) == 2  # each revision its own entry


def test_a_probe_that_fails_is_decided_by_the_rule_and_says_so(tmp_path, monkeypatch):
    def out_of_memory(_probe):
        raise RuntimeError("out of memory\nmore detail")

    monkeypatch.setattr("src.kernels.selection._cpu_identity", lambda: INTEL_AMX)
    names = ["causal_attention", "rms_norm"]
    decisions = choose_kernels(names, FP32_TRAINING, cache=TimingCache(tmp_path), timer=out_of_memory)
    assert kept(decisions) == ["rms_norm"]
    assert {d.reason for d in decisions} == {"by rule, not measured: out of memory"}
    assert not (tmp_path / FILE_NAME).exists()


@pytest.mark.parametrize(
    ("cpu", "workload", "expected"),
    [
        (INTEL_AMX, FP32_TRAINING, ["rms_norm"]),  # oneDNN's fp32 linear 1.46x, attention 1.03x
        (INTEL_AMX, BF16_TRAINING, ["causal_attention", "rms_norm"]),
        (INTEL_AMX, FP32_DECODING, []),
        (INTEL_AMX, BF16_DECODING, ["packed_linear"]),
        (INTEL_AVX512, BF16_TRAINING, ["rms_norm", "upcast_attention", "upcast_linear"]),  # bf16 emulated
        (INTEL_AVX512, BF16_DECODING, ["upcast_linear"]),
        (ZEN2, FP32_TRAINING, ["rms_norm"]),
        (ZEN2, FP32_DECODING, ["onednn_linear"]),
        (ZEN2, BF16_TRAINING, ["rms_norm", "upcast_attention", "upcast_linear"]),
        (ZEN3_AVX2, FP32_DECODING, ["onednn_linear"]),
        (ZEN4, FP32_TRAINING, ["rms_norm", "onednn_linear_torch_wgrad"]),
        (ZEN4, BF16_TRAINING, ["causal_attention", "rms_norm"]),
        (ZEN4, BF16_DECODING, ["packed_linear"]),
        (ZEN5, FP32_TRAINING, ["rms_norm", "onednn_linear"]),
        (ZEN5, FP32_DECODING, ["onednn_linear"]),
        (("", 0, set()), BF16_TRAINING, []),  # no /proc/cpuinfo, or not x86
        (("", 0, set()), FP32_DECODING, []),
    ],
)
def test_the_rule_keeps_kernels_only_where_they_were_measured_to_win(cpu, workload, expected):
    assert [name for name in KERNELS if rule_keeps(name, workload, cpu)] == expected


def test_measuring_on_this_machine_gives_a_ratio_per_kernel_and_leaves_the_seed_alone(tmp_path):
    torch.manual_seed(7)
    decisions = choose_kernels(KERNELS, FP32_TRAINING, cache=TimingCache(tmp_path), timer=OneRealSeries())
    after = torch.randn(3)
    torch.manual_seed(7)
    assert torch.equal(after, torch.randn(3))  # the probes' random inputs came from a forked generator
    assert all(d.ratio is not None and d.ratio > 0 for d in decisions if d.kernel in TRAINING_KERNELS)
    line = summary(decisions, FP32_TRAINING)
    assert "\n" not in line and all(name in line for name in KERNELS)
    spent = sum(d.probe_s for d in decisions)
    assert spent > 0 and line.endswith(f"; measured in {spent:.1f} s")  # what the start paid
    again = summary(choose_kernels(KERNELS, FP32_TRAINING, cache=TimingCache(tmp_path)), FP32_TRAINING)
    assert "measured in" not in again and "(cached)" in again  # read back: nothing measured


def test_the_upcast_kernels_are_measured_on_bf16_training_shapes(tmp_path):
    bf16 = Workload(TINY, 2, 32, torch.bfloat16, training=True)
    upcast = ["upcast_attention", "upcast_linear"]
    decisions = choose_kernels(upcast, bf16, cache=TimingCache(tmp_path), timer=OneRealSeries())
    assert [d.kernel for d in decisions] == upcast and all(d.ratio > 0 for d in decisions)


def test_bf16_inference_keeps_the_faster_of_the_bf16_linears_and_logs_why(tmp_path, monkeypatch, caplog):
    """bf16 decoding: only packed_linear and upcast_linear can act (the others act on fp32, on
    gradients, on uncached attention), and they are rivals for the linear layers."""
    monkeypatch.setenv("SMOLLM2_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("src.kernels.probes.packing_available", lambda: True)  # whatever this CPU has
    timer = FakeTimer.steady((0.5, 1.0), (0.6, 1.0))
    monkeypatch.setattr(
        "src.serving.inference.choose_kernels", functools.partial(choose_kernels, timer=timer)
    )
    with caplog.at_level("INFO"):
        model = ready_for_inference(SmolLM2(TINY), "cpu", torch.bfloat16)
    assert applied_kernels(model) == ["packed_linear"] and timer.kernels_timed == 2
    assert all(type(m) is PackedLinear for m in model.modules() if isinstance(m, nn.Linear))
    assert (
        "CPU kernels: kept packed_linear 0.50x; dropped causal_attention (unused by cached decoding), "
        "rms_norm (acts only when gradients are wanted), onednn_linear (acts on fp32 only), "
        "onednn_linear_torch_wgrad (acts on fp32 only), upcast_attention (unused by cached decoding), "
        "upcast_linear 0.60x (packed_linear is faster)" in caplog.text
    )


def test_a_training_run_measures_once_prints_its_choice_and_the_next_run_reads_it(
    tmp_path, monkeypatch, caplog
):
    from tests.training import fast_overrides, run_training, write_text

    monkeypatch.setenv("SMOLLM2_CACHE_DIR", str(tmp_path / "cache"))
    timer = OneRealSeries()
    monkeypatch.setattr("src.training.run.choose_kernels", functools.partial(choose_kernels, timer=timer))
    text = write_text(tmp_path / "input.txt")
    for run in ("first", "second"):
        caplog.clear()
        with caplog.at_level("INFO"):
            run_training(
                fast_overrides(
                    tmp_path / run,
                    text,
                    "trainer.max_steps=2",
                    "val_at_start=false",
                    "schedule.warmup_steps=1",
                )
            )
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CPU kernels:")]
        assert len(lines) == 1 and all(name in lines[0] for name in TRAINING_KERNELS)
        assert ("(cached)" in lines[0]) == (run == "second")
    assert len(json.loads((tmp_path / "cache" / FILE_NAME).read_text())) == len(TRAINING_KERNELS)
    assert timer.calls == 2 * len(TRAINING_KERNELS)  # two series per kernel, in the first run only
    with pytest.raises(UserError, match="kernels_policy='sometimes': use measure"):
        run_training(fast_overrides(tmp_path / "bad", text, "kernels_policy=sometimes"))


def test_a_decoding_probe_reads_the_whole_head_and_every_layer_up_to_more_than_a_cache_holds():
    # One layer's projections sit in cache, while decoding streams all of them from memory:
    # timed in cache, oneDNN's fp32 matrix-vector product read 0.94x and 1.07x of MKL's; from memory, 0.74x.
    # The head is one product over a 49,152-row weight: widened to fp32 whole on an AVX2 CPU,
    # it took 2.7x the emulated bf16 product, while a slice of its width took 0.62x.
    tiny_layers = _layer_and_head_shapes(TINY)[:-1]
    head = (TINY.hidden_size, TINY.vocab_size)
    assert _decoding_shapes(TINY, torch.float32) == [head] + tiny_layers * TINY.num_layers  # all of it
    big = SmolLM2Config.from_preset("smollm2_135m")
    shapes = _decoding_shapes(big, torch.float32)
    layer = _layer_and_head_shapes(big)[:-1]
    layer_bytes = 4 * sum(i * o for i, o in layer)
    layers = (len(shapes) - 1) // len(layer)
    assert shapes[0] == (big.hidden_size, big.vocab_size) and shapes.count(shapes[0]) == 1
    head_bytes = 4 * big.hidden_size * big.vocab_size
    assert 1 < layers < big.num_layers
    budget = DECODING_WEIGHT_BYTES - head_bytes
    assert layers * layer_bytes <= budget < (layers + 1) * layer_bytes
    assert DECODING_WEIGHT_BYTES >= 4 * 32 * 2**20  # well beyond a 32 MiB last-level cache


def test_a_full_disk_keeps_the_timings_for_the_process_and_leaves_the_file_and_no_temporary(
    tmp_path, monkeypatch
):
    cache = TimingCache(tmp_path)
    cache.put("rms_norm", "earlier", (0.5, 1.0))
    before = (tmp_path / FILE_NAME).read_text()

    def full_disk(entries, f, **kwargs):
        f.write("{half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", full_disk)
    cache.put("rms_norm", "later", (0.25, 1.0))
    assert not cache.saved and cache.get("rms_norm", "later") == (0.25, 1.0)
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]
    assert (tmp_path / FILE_NAME).read_text() == before
