"""Host-side settings the trainer applies on CPU runs."""

import platform

import pytest
import torch

from src.training import hardware
from src.training.hardware import keep_freed_host_memory, resolve_precision, uses_cuda


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_glibc_keeps_freed_memory_and_large_tensors_still_allocate():
    assert keep_freed_host_memory()
    big = torch.ones(64 * 2**20)  # 256 MB: above glibc's mmap threshold, now from the heap
    assert big.sum().item() == 64 * 2**20
    del big
    again = torch.zeros(64 * 2**20)  # reuses the freed block
    assert again.abs().sum().item() == 0


def test_uses_cuda_follows_the_accelerator_setting():
    assert not uses_cuda("cpu")
    assert uses_cuda("gpu")
    assert uses_cuda("auto") == torch.cuda.is_available()


@pytest.mark.parametrize(
    "flags, precision",
    [
        ("avx2 avx512f avx512bw", "32-true"),
        ("avx2 avx512f avx512_bf16", "bf16-mixed"),
        ("amx_bf16 amx_tile", "bf16-mixed"),
        ("", "32-true"),  # no /proc/cpuinfo
    ],
)
def test_cpu_precision_auto_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, flags, precision):
    monkeypatch.setattr(hardware, "first_cpu_fields", lambda: {"flags": flags})
    assert resolve_precision("auto", "cpu") == precision
