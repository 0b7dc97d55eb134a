"""Host-side settings the trainer applies on CPU runs."""

import platform

import pytest
import torch

from src.training.hardware import keep_freed_host_memory, uses_cuda


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
