"""Which CPU kernels a run keeps: those that beat PyTorch's own op on this machine.

A kernel tuned on one CPU can lose on another: oneDNN's fp32 matmul ran 1.67x MKL's speed
in a training step on AMD Zen 5 and 0.70x on an Intel Xeon, where MKL already runs
AVX-512 and AMX. So under `kernels_policy=measure` (the default) each candidate is timed
against the op it replaces on the model's own shapes (src/kernels/probes.py) and kept
only if it is at least `MARGIN` faster; the timings are cached per CPU model, PyTorch
version and kernel revision (src/kernels/timing_cache.py), so only a machine's first run
pays for them.
On a busy machine one timing can read either way, so each kernel is timed in two series
(each of several rounds, but one where a side is `LOPSIDED`), and in a third when those
disagree: the decision is that of two series that agree (two noisy series can still agree).
It is cached whatever it is, so that a run and its continuation on one machine use the same
kernels and continue bit for bit. A checkpoint records the kernels its run kept too
(`KernelRecord`): a continuation on the same machine and shapes keeps those, whatever the
cache holds by then. `always` keeps every candidate that acts on the workload. Where a
probe cannot run, `rule_keeps` decides from the CPU's vendor, family and flags and the
workload. Kernels that replace the same module (two oneDNN linears) are rivals: one of them
stays (`one_per_module`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from src.errors import UserError
from src.kernels.converter import replaced_module
from src.kernels.probes import Probe, Workload, probe
from src.kernels.timing_cache import TimingCache, recorded_here, this_machine
from src.training.hardware import cpu_flags, first_cpu_fields

POLICIES = ("measure", "always")
MARGIN = 0.03  # a kernel within 3% of PyTorch's time is noise, not a gain: PyTorch's op runs
PROBE_BUDGET_S = 0.5  # seconds of timing per kernel, both series together (more if MIN_ROUNDS take longer)
SERIES_BUDGET_S = PROBE_BUDGET_S / 2  # a timing series stops after this much time, once MIN_ROUNDS ran
MIN_ROUNDS, MAX_ROUNDS = 3, 10  # per series: at most 20 rounds per kernel, both series together
LOPSIDED = 2.0  # a series whose first round has one side this many times faster ends there


@dataclass(frozen=True)
class Decision:
    """Whether a kernel is kept, and why: its time over PyTorch's, or a reason without one."""

    kernel: str
    keep: bool
    ratio: float | None = None  # kernel seconds / PyTorch seconds, where timed
    reason: str = ""
    cached: bool = False
    probe_s: float = 0.0  # seconds spent building and timing its probe at this start

    def describe(self) -> str:
        if self.ratio is None:
            return f"{self.kernel} ({self.reason})"
        notes = "; ".join(note for note in ("cached" if self.cached else "", self.reason) if note)
        return f"{self.kernel} {self.ratio:.2f}x" + (f" ({notes})" if notes else "")


@dataclass(frozen=True)
class KernelRecord:
    """The kernels a run kept, on which machine (CPU model and PyTorch version) and for which
    workload (`Workload.key()`): stored in its checkpoints, so that its continuation keeps them."""

    kept: tuple[str, ...]
    machine: str
    workload: str

    @classmethod
    def of(cls, kept: Sequence[str], workload: Workload) -> KernelRecord:
        return cls(tuple(kept), this_machine(), workload.key())

    def to_dict(self) -> dict[str, Any]:
        return {"kept": list(self.kept), "machine": self.machine, "workload": self.workload}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> KernelRecord:
        return cls(tuple(saved["kept"]), saved["machine"], saved["workload"])


def check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise UserError(f"kernels_policy={policy!r}: use measure (keep what is faster here) or always")


def time_pair(pair: Probe) -> tuple[float, float]:
    """One timing series: best seconds per call of the kernel and of PyTorch's op, called
    alternately after one warm-up call each: the best of several calls is the least disturbed
    by other processes. A `LOPSIDED` first round ends the series: no disturbance makes one
    side twice as fast, and more rounds of an emulated op (bf16 on a CPU without bf16
    instructions: seconds per call) would only delay the start."""
    calls = (pair.kernel, pair.pytorch)
    for call in calls:
        call()
    best, spent, rounds = [math.inf, math.inf], 0.0, 0
    while rounds < MIN_ROUNDS or (spent < SERIES_BUDGET_S and rounds < MAX_ROUNDS):
        for i, call in enumerate(calls):
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            best[i], spent = min(best[i], elapsed), spent + elapsed
        rounds += 1
        if rounds == 1 and max(best) >= LOPSIDED * min(best):
            break
    return best[0], best[1]


def _cpu_identity() -> tuple[str, int, set[str]]:
    """(vendor, family, flags) from /proc/cpuinfo; ("", 0, set()) where there is none."""
    fields = first_cpu_fields()
    family = fields.get("cpu family", "0")
    return (
        fields.get("vendor_id", ""),
        int(family) if family.isdigit() else 0,
        cpu_flags(),
    )


def faster_by_margin(ratio: float) -> bool:
    """Whether a kernel taking `ratio` times PyTorch's seconds is kept."""
    return ratio <= 1 - MARGIN


def agreed_timings(measure: Callable[[], tuple[float, float]]) -> tuple[float, float]:
    """(kernel s, PyTorch s) from timing series of `measure` that agree on keeping the kernel,
    as the best time of each side. Two series that disagree get a third, and the two that
    agree decide: a decision rests on two series, not on one noisy moment. (The best times
    of series that agree land on their side of the threshold too.)"""
    series = [measure(), measure()]
    keeps = [faster_by_margin(kernel_s / pytorch_s) for kernel_s, pytorch_s in series]
    if keeps[0] != keeps[1]:
        series.append(measure())
        keeps.append(faster_by_margin(series[2][0] / series[2][1]))
    majority = keeps.count(True) >= 2
    agreeing = [timing for timing, keep in zip(series, keeps, strict=True) if keep == majority]
    return min(kernel_s for kernel_s, _ in agreeing), min(pytorch_s for _, pytorch_s in agreeing)


def rule_keeps(kernel: str, workload: Workload, cpu: tuple[str, int, set[str]] | None = None) -> bool:
    """Whether `kernel` is kept on `workload` without measuring: only where it was measured
    to win (benchmarks/README.md), on AMD Zen 2 (AVX2), Zen 4 and Zen 5 and an Intel Xeon
    with AMX. `rms_norm` (fewer passes over memory) won in training on all of them, both
    dtypes, so every x86 CPU keeps it. `causal_attention` won in bf16 where bf16 runs natively
    (AVX512-BF16 or AMX); in fp32 it won on Zen 5 only, and by less than the other kernels:
    kept in bf16 there only. oneDNN's fp32 linear won training only on Zen 5 (0.70x on the
    AMX Xeon, where MKL runs AVX-512 and AMX) and decoding on Zen 2, 4 and 5 (dropped on the
    Xeon): kept there; its variant with PyTorch's weight gradient only in Zen 4 training.
    `packed_linear` (bf16 decoding) won where oneDNN has native bf16. The upcast kernels are
    kept on x86 CPUs without bf16 arithmetic, where bf16 matmuls are emulated (Zen 2; Zen 4
    limited to AVX-512 without bf16). Other architectures keep none: PyTorch's ops cannot be
    slower than themselves.
    """
    vendor, family, flags = cpu or _cpu_identity()
    x86 = vendor in ("AuthenticAMD", "GenuineIntel")
    native_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    zen = vendor == "AuthenticAMD" and family >= 23
    zen4 = zen and family == 25 and "avx512f" in flags
    training, bf16 = workload.training, workload.dtype == torch.bfloat16
    fp32 = workload.dtype == torch.float32
    keeps = {
        "causal_attention": x86 and training and bf16 and native_bf16,
        "rms_norm": x86 and training,
        "onednn_linear": zen and fp32 and (family >= 26 or not training),
        "onednn_linear_torch_wgrad": fp32 and training and zen4,
        "packed_linear": x86 and not training and bf16 and native_bf16,
        "upcast_attention": x86 and training and bf16 and not native_bf16,
        "upcast_linear": x86 and bf16 and not native_bf16,
    }
    return keeps[kernel]


def one_per_module(decisions: Sequence[Decision]) -> list[Decision]:
    """The decisions with at most one kept kernel per replaced module type (a model takes the
    first named of several, `apply_cpu_kernels`): the fastest where all were timed, else the
    first; the others are dropped and say why."""
    result = list(decisions)
    rivals: dict[type, list[int]] = defaultdict(list)
    for i, decision in enumerate(decisions):
        if decision.keep:
            rivals[replaced_module(decision.kernel)].append(i)
    for members in rivals.values():
        timed = all(decisions[i].ratio is not None for i in members)
        winner = min(members, key=lambda i: decisions[i].ratio) if timed else members[0]
        reason = f"{decisions[winner].kernel} is " + ("faster" if timed else "named first")
        for i in members:
            if i != winner:
                result[i] = dataclasses.replace(decisions[i], keep=False, reason=reason)
    return result


def choose_kernels(
    candidates: Sequence[str],
    workload: Workload,
    policy: str = "measure",
    cache: TimingCache | None = None,
    timer: Callable[[Probe], tuple[float, float]] = time_pair,
    on_cpu: bool = True,
    continued: KernelRecord | None = None,
) -> list[Decision]:
    """A decision for each candidate kernel, in order. Off the CPU none is kept (each would
    run PyTorch's op anyway). `cache`: None reads and writes the default folder. `timer` is
    called two or three times per uncached kernel (`agreed_timings`); every decision is
    cached, so the runs of one machine (a run and its continuation) keep the same kernels.
    `continued`: what the checkpoint a run continues kept; on the same machine and workload
    those are kept again without a look at the cache (it may have been deleted meanwhile):
    a kernel rounds differently from PyTorch's op, so a continuation that swapped one would
    not continue bit for bit. Of kept kernels that replace the same module, one stays
    (`one_per_module`)."""
    check_policy(policy)
    if policy == "always":
        return one_per_module([kept_always(name, workload) for name in candidates])
    if not on_cpu:
        return [Decision(name, False, reason="not a CPU run") for name in candidates]
    if continued is not None and recorded_here(continued.machine) and continued.workload == workload.key():
        reason = "as the continued run"
        return one_per_module([Decision(name, name in continued.kept, reason=reason) for name in candidates])
    if cache is None and candidates:
        cache = TimingCache()
    uncached = any(cache.get(name, workload.key()) is None for name in candidates)
    with cache.measuring() if uncached else contextlib.nullcontext():
        return one_per_module(measured_decisions(candidates, workload, cache, timer))


def kept_always(kernel: str, workload: Workload) -> Decision:
    """`kernels_policy=always`: kept wherever it acts on `workload`. One that cannot act (an
    fp32 kernel in a bf16 run) is dropped with why, so that it never takes the place of a
    rival that acts (`one_per_module`)."""
    with torch.random.fork_rng(devices=[]):
        pair = probe(kernel, workload)
    if isinstance(pair, str):
        return Decision(kernel, False, reason=pair)
    return Decision(kernel, True, reason="kernels_policy=always")


def measured_decisions(
    candidates: Sequence[str],
    workload: Workload,
    cache: TimingCache,
    timer: Callable[[Probe], tuple[float, float]],
) -> list[Decision]:
    """Each candidate timed against PyTorch's op (or read from `cache`), or dropped with why."""
    decisions = []
    for name in candidates:
        timings = cache.get(name, workload.key())
        cached = timings is not None
        probe_s, started = 0.0, time.perf_counter()
        if timings is None:
            try:
                with torch.random.fork_rng(devices=[]):  # a run's seeded weights never depend on the cache
                    pair = probe(name, workload)
                    if isinstance(pair, str):
                        decisions.append(Decision(name, False, reason=pair))
                        continue
                    timings = agreed_timings(functools.partial(timer, pair))
            except RuntimeError as err:  # e.g. out of memory: decide as the rule does
                keep = rule_keeps(name, workload)
                decisions.append(Decision(name, keep, reason=f"by rule, not measured: {err}".splitlines()[0]))
                continue
            cache.put(name, workload.key(), timings)
            probe_s = time.perf_counter() - started
        ratio = timings[0] / timings[1]
        unsaved = f"not cached: {cache.path} cannot be written, measured at every start"
        reason = "" if cached or cache.saved else unsaved
        keep = faster_by_margin(ratio)
        decisions.append(Decision(name, keep, ratio=ratio, reason=reason, cached=cached, probe_s=probe_s))
    return decisions


def kept(decisions: Sequence[Decision]) -> list[str]:
    return [d.kernel for d in decisions if d.keep]


def summary(decisions: Sequence[Decision], workload: Workload) -> str:
    """One line: which kernels were kept and dropped, and why."""
    if not decisions:
        return "CPU kernels: none (kernels=[])"
    kept_ = ", ".join(d.describe() for d in decisions if d.keep) or "none"
    dropped = ", ".join(d.describe() for d in decisions if not d.keep) or "none"
    line = f"CPU kernels: kept {kept_}; dropped {dropped}"
    if any(d.ratio is not None for d in decisions):
        mode = "training" if workload.training else "decoding"
        dtype = str(workload.dtype).removeprefix("torch.")
        line += (
            f" (time over PyTorch's op on this model's {dtype} {mode} shapes; kept below {1 - MARGIN:.2f}x)"
        )
    if spent := sum(d.probe_s for d in decisions):  # 0 where every timing came from the cache
        line += f"; measured in {spent:.1f} s"
    return line
