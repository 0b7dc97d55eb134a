"""Kernel timings measured once per machine, kept in a JSON file outside the repository.

A timing holds for one CPU model (`cpu_name`), one PyTorch version (a new release can change which
library a matmul calls), one thread count and one revision of the kernel's code, so all four
are part of every key: on another CPU, after an upgrade, with other threads or a change to the
kernel, the key differs and the kernel is measured again. One process measures at a time
(`measuring`): two at once would time each other's load, and the cache would keep it. The
folder is `$SMOLLM2_CACHE_DIR`, else `$XDG_CACHE_HOME/smollm2`, else `~/.cache/smollm2`.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from src.files import atomic_write
from src.kernels.converter import kernel_revision
from src.training.hardware import cpu_flags, first_cpu_fields

FILE_NAME = "kernel_timings.json"


# The widest of these instruction sets the CPU reports, widest first: part of its identity.
ISA_TIERS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")


def cpu_model_name() -> str:
    """The CPU's model name alone, as the OS reports it."""
    return first_cpu_fields().get("model name") or platform.processor() or platform.machine()


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (Linux: /proc/cpuinfo), with its family,
    model and widest instruction set (`ISA_TIERS`) where /proc/cpuinfo gives them: a cloud
    VM may name every CPU of a vendor alike ("AMD EPYC" for Zen 2 to 5), and a cache in a
    home folder shared by a cluster's nodes must not lend one CPU's timings to another."""
    fields = first_cpu_fields()
    name = cpu_model_name()
    if "cpu family" not in fields:
        return name
    flags = cpu_flags()
    isa = next((tier for tier in ISA_TIERS if tier in flags), "no avx2")
    return f"{name} (family {fields['cpu family']} model {fields.get('model', '?')}, {isa})"


# Variables that make oneDNN, MKL or PyTorch's own kernels use fewer of the CPU's instructions
# (AVX2 code on an AVX-512 CPU, say): the same CPU then runs other code, so timings differ.
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def isa_limits() -> list[str]:
    """The `ISA_LIMITS` variables set for this process, as NAME=value."""
    return [f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name)]


def this_machine(cpu: str | None = None) -> str:
    """What a timing holds for: the CPU (`cpu_name`), the PyTorch version, and any
    instruction-set limit set for this process (`isa_limits`)."""
    return " | ".join([cpu or cpu_name(), f"torch {torch.__version__}", *isa_limits()])


def recorded_here(machine: str) -> bool:
    """Whether `machine` (a `this_machine()` string saved earlier) names this machine. Before
    family, model and instruction set were part of it, it named the model alone: such a
    record is taken as this machine's where that name is this CPU's, as it was then."""
    return machine in (this_machine(), this_machine(cpu_model_name()))


def default_cache_dir() -> Path:
    if folder := os.environ.get("SMOLLM2_CACHE_DIR"):
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "smollm2"


def valid_timings(timings: object) -> bool:
    """(kernel seconds, PyTorch seconds), as `put` writes them."""
    return (
        isinstance(timings, list)
        and len(timings) == 2
        and all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in timings)
    )


class TimingCache:
    """(kernel seconds, PyTorch seconds) per kernel and workload, for `machine` (default: this one).

    A missing or unreadable file is an empty cache, and an entry that is not two positive
    timings is none; a folder that cannot be written keeps the timings for this process only
    (`saved` says which).
    """

    def __init__(self, folder: Path | None = None, machine: str | None = None) -> None:
        self.path = (folder or default_cache_dir()) / FILE_NAME
        self.machine = machine or this_machine()
        self.saved = True
        self.entries = self._read()

    def _read(self) -> dict[str, list[float]]:
        try:
            entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(entries, dict):
            return {}
        return {key: timings for key, timings in entries.items() if valid_timings(timings)}

    def key(self, kernel: str, workload_key: str) -> str:
        threads = f"{torch.get_num_threads()} threads"
        return f"{self.machine} | {threads} | {kernel} v{kernel_revision(kernel)} | {workload_key}"

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Hold the cache's lock while measuring, then read what a run that held it before
        measured meanwhile. Where no lock can be had (a folder that cannot be written, a file
        system without locks) the run measures without one."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = self.path.with_suffix(".lock").open("w")
        except OSError:
            yield
            return
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            except OSError:
                pass
            self.entries = {**self.entries, **self._read()}
            yield

    def get(self, kernel: str, workload_key: str) -> tuple[float, float] | None:
        timings = self.entries.get(self.key(kernel, workload_key))
        return (timings[0], timings[1]) if timings else None

    def put(self, kernel: str, workload_key: str, timings: tuple[float, float]) -> None:
        """Record and write the file, merged with what other runs wrote meanwhile, atomically
        (concurrent runs never read half a file)."""
        self.entries = {**self._read(), **self.entries, self.key(kernel, workload_key): list(timings)}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(self.path) as f:
                json.dump(self.entries, f, indent=1, sort_keys=True)
        except OSError:
            self.saved = False
