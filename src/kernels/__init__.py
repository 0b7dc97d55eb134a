"""Faster CPU implementations of the model's hot spots, applied to a built model by name."""

from src.kernels.converter import KERNELS, apply_cpu_kernels, check_kernels

__all__ = ["KERNELS", "apply_cpu_kernels", "check_kernels"]
