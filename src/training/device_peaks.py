"""Dense bf16/fp16 tensor-core peaks of training GPUs, keyed by the exact name CUDA reports.

Exact names, not fragments: "H100" alone would give an H100 PCIe (756 TFLOP/s) or NVL
(835) the SXM part's 989 and understate its MFU by a quarter. Values are the vendors'
datasheet figures without sparsity (the datasheets print the sparse ones, twice these).
A GPU missing here gets no MFU until `callbacks.throughput.peak_tflops=` names its peak.
"""

from __future__ import annotations

import torch

BF16_DENSE_TFLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989.4,  # H100 SXM
    "NVIDIA H100 PCIe": 756.5,
    "NVIDIA H100 NVL": 835.5,
    "NVIDIA H200": 989.4,  # H200 SXM
    "NVIDIA H200 NVL": 835.5,
    "NVIDIA GH200 480GB": 989.4,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A10": 125.0,
    "NVIDIA L4": 121.0,
    "NVIDIA L40": 181.0,
    "NVIDIA L40S": 362.0,
    "NVIDIA GeForce RTX 4090": 165.2,  # fp32 accumulation
}


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16/fp16 peak of the GPU CUDA calls `device_name`, if it is in the table."""
    return BF16_DENSE_TFLOPS.get(device_name.strip())


def peak_flops(device: torch.device, precision: str | int) -> float | None:
    """Peak FLOP/s of one device in the run's precision, if known (GPUs in bf16/fp16 only)."""
    if device.type != "cuda" or "32" in str(precision):
        return None
    peak = bf16_peak_tflops(torch.cuda.get_device_name(device))
    return None if peak is None else peak * 1e12
