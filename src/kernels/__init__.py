"""Faster CPU implementations of the model's hot spots, applied to a built model by name."""

from src.kernels.converter import KERNELS, applied_kernels, apply_cpu_kernels, check_kernels, loss_matmuls

__all__ = ["KERNELS", "applied_kernels", "apply_cpu_kernels", "check_kernels", "loss_matmuls"]
