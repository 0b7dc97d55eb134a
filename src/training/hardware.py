"""What the machine can do: CPU features, bf16 support, the default precision, TF32, host memory reuse."""

from __future__ import annotations

import ctypes
import functools
import platform

import torch

from src.errors import UserError


@functools.cache  # read once: a process's CPU does not change
def first_cpu_fields() -> dict[str, str]:
    """The first CPU's entry of /proc/cpuinfo (`model name`, `vendor_id`, `flags`, ...); {} elsewhere."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break  # the first CPU is enough
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """The first CPU's instruction-set flags (`avx2`, `avx512_bf16`, `amx_bf16`, ...)."""
    return set(first_cpu_fields().get("flags", "").split())


def cpu_has_bf16() -> bool:
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning's `accelerator` setting puts this run on a CUDA GPU."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed where bf16 runs natively, else 16-mixed on GPUs, 32-true on CPUs."""
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={accelerator} but no CUDA GPU is visible; use trainer=cpu")
    use_cuda = uses_cuda(accelerator)
    if precision != "auto":
        if not use_cuda and precision == "16-mixed":
            raise UserError(
                f"precision={precision} needs a GPU (Lightning would silently use bf16 on CPU); "
                "use bf16-mixed or 32-true"
            )
        if use_cuda and "bf16" in precision and not torch.cuda.is_bf16_supported():
            raise UserError(f"this GPU cannot run precision={precision}; use 16-mixed or 32-true")
        return precision
    if use_cuda:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_has_bf16() else "32-true"


def enable_tf32() -> None:
    """TF32 matmuls on Ampere and newer (fp32 runs keep fp32 storage, as PyTorch recommends)."""
    if torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8:
        torch.set_float32_matmul_precision("high")


def keep_freed_host_memory() -> bool:
    """Make glibc keep freed memory in the process, as CUDA's caching allocator does on a GPU.

    By default glibc returns every block over 32 MB to the OS when it is freed, so each CPU
    training step page-faults its large temporaries (loss chunks, logits) in again, at a
    cost that grows with the process's other memory (benchmarks/README.md). Afterwards
    freed memory is reused and resident memory stays at its peak.
    Returns False where the C library is not glibc.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    no_mmap = libc.mallopt(m_mmap_max, 0) == 1  # big blocks come from the heap too ...
    no_trim = libc.mallopt(m_trim_threshold, 2**31 - 1) == 1  # ... and stay there when freed
    return no_mmap and no_trim
