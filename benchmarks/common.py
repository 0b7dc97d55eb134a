"""What every benchmark shares: device choice, machine line, interleaved timing, peaks, tables.

Timings on a shared machine drift, so candidates are timed round-robin in one process
(A, B, A, B, ...) after warm-up and compared by their medians; the spread printed next
to each median shows how noisy the run was.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch.profiler import ProfilerActivity, profile

from src.kernels.linear import linear
from src.kernels.timing_cache import cpu_name, isa_limits
from src.kernels.upcast import upcast_linear
from src.models.config import preset_names
from src.serving.inference import resolve_device
from src.training.hardware import keep_freed_host_memory

_freed_host_memory = "returned to the OS"  # what setup() did, for machine_line

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PYTORCH_KERNELS = "ours, PyTorch kernels"  # the row of our model with kernels=[]
# The most minor page faults a timed call may take and still be a steady-state call: 16 MiB
# of 4 KiB pages, milliseconds of paging against steps of seconds.
STEADY_PAGE_FAULTS = 4096


# argparse `type=` functions: a bad value ends the script with usage and one `error:` line
# naming the argument (exit 2) before any model is built, instead of a traceback mid-run.


def positive_int(text: str) -> int:
    """A count that must be at least 1 (repeats, steps, tokens, batch sizes, lengths)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """A count that may be 0 (warm-up calls, workers)."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def positive_ints(text: str) -> list[int]:
    """'1,8' -> [1, 8]: comma-separated counts, each at least 1."""
    return [positive_int(part) for part in _parts(text, "1,8")]


class Shape(NamedTuple):
    """A batch shape; prints as the BATCHxSEQ it was given."""

    batch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.seq}"


def shape(text: str) -> Shape:
    """'2x1024' -> Shape(2, 1024): batch size x sequence length, both at least 1."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r} is not BATCHxSEQ; write e.g. 2x1024")
    try:
        return Shape(*(positive_int(part) for part in parts))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: BATCH and SEQ must be whole numbers of at least 1, e.g. 2x1024"
        ) from None


def shapes(text: str) -> list[Shape]:
    """'2x1024,4x256' -> [Shape(2, 1024), Shape(4, 256)]."""
    return [shape(part) for part in _parts(text, "2x1024,4x256")]


def dtype_names(text: str) -> list[str]:
    """'fp32,bf16' -> ['fp32', 'bf16'], each a key of DTYPES."""
    names = _parts(text, "fp32,bf16")
    unknown = [name for name in names if name not in DTYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {', '.join(unknown)}; choose from {', '.join(DTYPES)}"
        )
    return names


def add_preset_arg(parser: argparse.ArgumentParser, default: str, flag: str = "--preset") -> None:
    """A model preset of src/conf/model, its choices listed in --help and in the error."""
    presets = preset_names()
    parser.add_argument(
        flag,
        default=default,
        choices=presets,
        metavar="PRESET",
        help=f"model preset: {', '.join(presets)} (default {default})",
    )


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _parts(text: str, example: str) -> list[str]:
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} has an empty item; write a comma-separated list, e.g. {example}"
        )
    return parts


def add_common_args(parser: argparse.ArgumentParser, repeats: int) -> None:
    add_dtypes_arg(parser)
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed calls per candidate")
    parser.add_argument("--repeats", type=positive_int, default=repeats, help="timed calls per candidate")
    add_device_arg(parser)
    add_host_args(parser)


def add_dtypes_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtypes", type=dtype_names, default="fp32,bf16", help=f"comma-separated: {', '.join(DTYPES)}"
    )


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """--device, which `setup` checks against this machine (src.serving.inference.resolve_device)."""
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")


def add_compile_args(parser: argparse.ArgumentParser, rows: str) -> None:
    """--compile (add the compiled `rows`) and --compile-backend."""
    parser.add_argument("--compile", action="store_true", help=f"add a row for {rows} under torch.compile")
    parser.add_argument(
        "--compile-backend",
        default="inductor",
        help="torch.compile's backend (aot_eager: traced as for inductor, without its code generation)",
    )


def compile_note(args: argparse.Namespace) -> str:
    """ ", compiled with backend=..." for the timing line of a run with --compile, else ""."""
    return f", compiled with backend={args.compile_backend}" if args.compile else ""


def add_host_args(parser: argparse.ArgumentParser) -> None:
    """--threads and --keep-freed-host-memory, which `setup` applies."""
    parser.add_argument("--threads", type=positive_int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--keep-freed-host-memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc keeps freed memory in the process, as CPU training does (keep_freed_host_memory)",
    )


def setup(args: argparse.Namespace) -> torch.device:
    """Apply --threads and --keep-freed-host-memory, resolve --device ('auto': CUDA if there is one).

    With --keep-freed-host-memory, host memory freed by one candidate is reused by the next instead
    of being page-faulted in again (src.training.hardware.keep_freed_host_memory): otherwise the
    models that allocate the largest temporaries slow down with everything else the
    process holds, and the ratio would measure the OS rather than the code.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    global _freed_host_memory
    _freed_host_memory = "kept" if args.keep_freed_host_memory else "returned to the OS"
    if args.keep_freed_host_memory and not keep_freed_host_memory():
        _freed_host_memory = "returned to the OS (not glibc)"
    return resolve_device(args.device, "--device ")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_line(device: torch.device) -> str:
    """One line naming the hardware and software the numbers came from."""
    torch_part = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}; {torch_part}"
    limits = "".join(f"; {limit}" for limit in isa_limits())  # fewer instructions than the CPU has
    return (
        f"{cpu_name()}, {os.cpu_count()} cores{limits}; {torch_part}; freed host memory {_freed_host_memory}"
    )


@dataclass
class Timing:
    """Seconds per call over the measured repeats, and the minor page faults each call took."""

    seconds: list[float]
    page_faults: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def spread(self) -> float:
        """(max - min) / median: 0.05 means the repeats agreed within 5%."""
        return (max(self.seconds) - min(self.seconds)) / self.median

    def cell(self) -> str:
        return f"{self.median:.3f} (±{100 * self.spread / 2:.0f}%)"

    def steady(self) -> Timing:
        """The calls that took at most `STEADY_PAGE_FAULTS` page faults, or all of them where
        none did. A call that faults more pays for memory the OS hands it afresh, which the
        same model's training run stops doing after a few steps: two models taking turns in
        one heap can keep it up (benchmarks/README.md, train_step)."""
        steady = [i for i, faults in enumerate(self.page_faults) if faults <= STEADY_PAGE_FAULTS]
        if not steady or len(steady) == len(self.seconds):
            return self
        return Timing([self.seconds[i] for i in steady], [self.page_faults[i] for i in steady])

    def page_faults_cell(self) -> str:
        """Fewest-most page faults per call: a call that faults pays for memory the OS hands
        it afresh, which a training run's steady state does not."""
        low, high = min(self.page_faults), max(self.page_faults)
        return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def page_faults() -> int:
    """Minor page faults of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_interleaved(
    candidates: dict[str, Callable[[], object]],
    device: torch.device,
    warmup: int,
    repeats: int,
    alternate: bool = False,
) -> dict[str, Timing]:
    """Warm each candidate up, then time them round-robin `repeats` times each; with
    `alternate`, every other round runs in reverse order (A B, B A, ...), so that neither
    candidate always runs right after the other."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    timings = {name: Timing([]) for name in candidates}
    for round_ in range(repeats):
        order = list(candidates.items())
        for name, fn in reversed(order) if alternate and round_ % 2 else order:
            synchronize(device)
            faults, start = page_faults(), time.perf_counter()
            fn()
            synchronize(device)
            timings[name].seconds.append(time.perf_counter() - start)
            timings[name].page_faults.append(page_faults() - faults)
    return timings


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes of live tensors allocated during one call, above what existed before it.

    CUDA: the caching allocator's own peak. CPU has no such counter, so the profiler
    records every allocation and free of the call and we take the running sum's maximum:
    tensors only, not allocator slack or Python objects (process RSS is too coarse here).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def matmul_size(device: torch.device) -> int:
    """4096² on a CPU (seconds per product); 8192² on a GPU, where a 4096² one is too short to fill it."""
    return 8192 if device.type == "cuda" else 4096


def matmul_peak_flops(
    dtype: torch.dtype, device: torch.device, size: int, repeats: int | None = None
) -> float:
    """Best FLOP/s of a large square matmul (`size`, see `matmul_size`): the denominator for MFU.

    The best of PyTorch's matmul and ours (`src.kernels.linear.linear`, oneDNN for fp32 on CPU;
    for bf16 on CPU also `upcast_linear`, fp32 arithmetic where bf16's is emulated), so that
    MFU is against the fastest kernel this machine has, not the one PyTorch picks.
    A GPU product takes about a millisecond: more repeats there, so its clocks ramp up first.
    """
    repeats = repeats or (20 if device.type == "cuda" else 5)

    def products(n: int) -> dict[str, Callable[[], object]]:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        candidates = {"torch": lambda: a @ b, "ours": lambda: linear(a, b)}
        if dtype == torch.bfloat16 and device.type == "cpu":
            candidates["upcast"] = lambda: upcast_linear(a, b)
        return candidates

    # Once at an eighth of the size: a candidate more than twice the fastest's time there is not
    # the peak, and is not timed at full size (an emulated bf16 matmul takes minutes at 4096).
    small = {name: min(t.seconds) for name, t in time_interleaved(products(size // 8), device, 1, 1).items()}
    candidates = {n: fn for n, fn in products(size).items() if small[n] <= 2 * min(small.values())}
    timings = time_interleaved(candidates, device, warmup=repeats // 4 or 1, repeats=repeats)
    return 2 * size**3 / min(min(t.seconds) for t in timings.values())


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
