"""bf16 CPU inference matmuls against weights prepacked in oneDNN's blocked layout.

A bf16 `F.linear` on CPU already runs on oneDNN, but with the weight in PyTorch's plain
layout, which oneDNN reorders for every call. In decoding every call reads a weight once
from memory, so that reorder costs a pass over each weight per token. `PackedLinear`
reorders its weight once and keeps the packed copy for inference (no gradients wanted,
bf16, CPU, eager); the results are the same bits. The packed copy is rebuilt whenever the
weight changes (new tensor, new dtype, or an in-place write such as `load_state_dict`),
and costs memory: one more copy of the weight while the model decodes.
"""

from __future__ import annotations

import torch

from src.kernels.linear import LinearReplacement


def packing_available() -> bool:
    """Whether this PyTorch build and CPU run oneDNN's bf16 matmuls, which the packed weight needs."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def uses_packed(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether `PackedLinear` runs x @ w.T on its packed weight: bf16 CPU inference, eager."""
    return (
        x.device.type == w.device.type == "cpu"
        and x.dtype == w.dtype == torch.bfloat16
        and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))
        and not w.is_inference()  # no version counter: an in-place write could not be seen
        and not torch.compiler.is_compiling()
        and packing_available()
    )


class PackedLinear(LinearReplacement):
    """`nn.Linear` whose bf16 CPU inference reads a oneDNN-packed copy of its weight; bias-free only."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._packed: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (weight, its version, packed)

    def _packed_weight(self) -> torch.Tensor:
        """The packed copy of the weight as it is now. The weight it was packed from is held,
        so no new tensor can take its address while the copy exists; an in-place write bumps
        the version that the held tensor shares."""
        w = self.weight
        if self._packed is not None:
            source, version, packed = self._packed
            if source.data_ptr() == w.data_ptr() and source._version == version and source.dtype == w.dtype:
                return packed
        source = w.detach()
        self._packed = source, source._version, torch.ops.mkldnn._reorder_linear_weight(source)
        return self._packed[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is not None or not uses_packed(x, self.weight):
            self._packed = None  # used otherwise now (training, another dtype): free the copy
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(), None, "none", [], "")

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed weight out (oneDNN's tensor has no storage to
        copy); they pack their own on first use."""
        return {**super().__getstate__(), "_packed": None}
