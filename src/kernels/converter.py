"""Swap modules of a built SmolLM2 for faster CPU implementations of the same functions.

As torchtitan's float8 converter does for `nn.Linear`: the model file stays plain
PyTorch, and a run picks its kernels by name (config `kernels`). Each replacement is a
subclass of the module it replaces that shares its parameters, so ties, state-dict keys
and checkpoints are those of the plain model; each falls back to the plain computation
where it does not apply (CUDA tensors, and the cases its module names).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import nn

from src.errors import UserError
from src.kernels.attention import BlockwiseCausalAttention
from src.kernels.linear import OneDNNLinear, OneDNNLinearTorchWeightGrad
from src.kernels.packed_linear import PackedLinear
from src.kernels.rms_norm import FusedRMSNorm
from src.kernels.upcast import UpcastCausalAttention, UpcastLinear
from src.models.smollm2 import RMSNorm, ScaledDotProductAttention


class _Swap(NamedTuple):
    plain: type[nn.Module]  # the module type it replaces
    replacement: type[nn.Module]
    build: Callable[[nn.Module], nn.Module]  # the replacement of a plain module, sharing its parameters
    # Raised with every change to the kernel's code or probe: timings cached for an earlier
    # revision are not used (src/kernels/timing_cache.py), the new code is measured again.
    revision: int


_SWAPS: dict[str, _Swap] = {
    # 2: per-block query buffers (no copies in bmm); 3: one reused scores buffer, keys scaled
    "causal_attention": _Swap(
        ScaledDotProductAttention, BlockwiseCausalAttention, lambda _: BlockwiseCausalAttention(), 3
    ),
    "rms_norm": _Swap(RMSNorm, FusedRMSNorm, FusedRMSNorm.from_norm, 2),  # 2: LayerNorm's fused backward
    # onednn_linear and packed_linear 2: the decoding probe multiplies the whole head
    "onednn_linear": _Swap(nn.Linear, OneDNNLinear, OneDNNLinear.from_linear, 2),
    # the same with PyTorch's weight gradient; where both are named, onednn_linear takes the layers
    "onednn_linear_torch_wgrad": _Swap(
        nn.Linear, OneDNNLinearTorchWeightGrad, OneDNNLinearTorchWeightGrad.from_linear, 1
    ),
    # bf16 inference; never kept together with onednn_linear, which acts on fp32 only
    "packed_linear": _Swap(nn.Linear, PackedLinear, PackedLinear.from_linear, 2),
    # bf16 computed in fp32, for CPUs without bf16 arithmetic; rivals of the two above
    # (upcast_linear 2: products of fewer than UPCAST_MIN_ROWS rows left to PyTorch; 3: a big
    # weight widened in slices, 16 rows at least, and the whole head in the decoding probe)
    "upcast_attention": _Swap(
        ScaledDotProductAttention, UpcastCausalAttention, lambda _: UpcastCausalAttention(), 1
    ),
    "upcast_linear": _Swap(nn.Linear, UpcastLinear, UpcastLinear.from_linear, 3),
}
KERNELS = tuple(_SWAPS)  # every kernel, the default of training and of CPU inference


def kernel_revision(kernel: str) -> int:
    """The revision of a kernel's code, part of the key of its cached timings."""
    return _SWAPS[kernel].revision


def replaced_module(kernel: str) -> type[nn.Module]:
    """The plain module type a kernel replaces: of kernels that replace the same type, a
    model takes the first named (`apply_cpu_kernels`)."""
    return _SWAPS[kernel].plain


def loss_matmuls(kernels: Sequence[str]) -> dict[str, bool]:
    """`lm_cross_entropy`'s matmul switches for a model with `kernels` applied: the loss's
    matmuls go where its linear layers' do."""
    linears = [_SWAPS[name].replacement for name in kernels if _SWAPS[name].plain is nn.Linear]
    if linears and issubclass(linears[0], UpcastLinear):
        return {"onednn": False, "upcast": True}
    if not linears or not issubclass(linears[0], OneDNNLinear):
        return {"onednn": False}
    return {"onednn": True, "onednn_weight_grad": linears[0].onednn_weight_grad}


def check_kernels(kernels: Sequence[str]) -> None:
    """Reject anything but a list of known kernel names, in one line."""
    if isinstance(kernels, str) or not isinstance(kernels, Sequence):
        raise UserError(f"kernels must be a list such as [{', '.join(KERNELS)}] or [], got {kernels!r}")
    unknown = [name for name in kernels if name not in _SWAPS]
    if unknown:
        raise UserError(
            f"unknown kernels {', '.join(map(str, unknown))}; choose from {', '.join(KERNELS)} "
            "(kernels=[] for plain PyTorch)"
        )
    twice = sorted({name for name in kernels if list(kernels).count(name) > 1})
    if twice:
        raise UserError(f"kernels names {', '.join(twice)} more than once; name each kernel once")


def apply_cpu_kernels(model: nn.Module, kernels: Sequence[str]) -> nn.Module:
    """Replace, in place, the plain modules of `model` that the named kernels implement.

    Apply it to a freshly built model, before compile or hooks: replaced modules do not
    carry hooks over. Applying it again changes nothing. Returns `model`.
    """
    check_kernels(kernels)
    swaps = [_SWAPS[name] for name in kernels]
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            for swap in swaps:
                if type(child) is swap.plain:  # the first named kernel for a module type takes it
                    setattr(parent, name, swap.build(child).train(child.training))
                    break
    return model


def applied_kernels(model: nn.Module) -> list[str]:
    """The kernels swapped into `model`, in `KERNELS` order."""
    types = {type(m) for m in model.modules()}
    return [name for name, swap in _SWAPS.items() if swap.replacement in types]
