"""Training-time transformations of a built model, applied from outside it as torchtitan does.

All work in place, block by block, so the module tree and the state-dict keys stay those of
the plain model: a checkpoint written with any of them loads into a plain model, and a run
can resume with them switched on or off. Order: activation checkpointing, compile, FSDP2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.utils.checkpoint import checkpoint

from src.models.kv_cache import LayerKVCache
from src.models.smollm2 import SmolLM2


def apply_compile(model: SmolLM2, **kwargs: Any) -> None:
    """`torch.compile` each block in place.

    Per block, so `hidden_states` (the training path) runs compiled code too and the
    identical blocks share one compiled graph; in place, unlike `torch.compile(model)`,
    so no `_orig_mod.` prefix enters the keys.
    """
    for block in model.blocks:
        block.compile(**kwargs)


def _checkpointed(
    forward: Callable[..., torch.Tensor],
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    cache: LayerKVCache | None = None,
    start: int | torch.Tensor = 0,
) -> torch.Tensor:
    """`Block.forward` recomputing its activations in backward instead of keeping them.

    Only while gradients are recorded and without a KV cache: evaluation and sampling
    keep no activations anyway.
    """
    if cache is None and torch.is_grad_enabled():
        return checkpoint(forward, x, cos, sin, use_reentrant=False)
    return forward(x, cos, sin, cache, start)


def apply_activation_checkpointing(model: SmolLM2) -> None:
    """Recompute each block's activations in backward: less memory for one more forward pass.

    Wraps each block's `forward` attribute, so apply it once.
    """
    for block in model.blocks:
        block.forward = functools.partial(_checkpointed, block.forward)


def apply_fsdp(model: SmolLM2, mesh: DeviceMesh, param_dtype: torch.dtype | None = None) -> None:
    """Shard each block, then the rest (embedding = tied head, final norm) as the root, with FSDP2.

    `param_dtype` (bf16 for bf16-mixed) is the dtype the gathered weights compute in, while the
    sharded fp32 weights are what the optimizer updates and gradients are reduced in fp32.
    Training calls `hidden_states` and then reads `lm_head.weight` in the loss, outside any
    forward: `hidden_states` is registered as a forward method, and the root keeps its
    gathered weights after forward, so the tied head is whole in the loss and its gradient
    reaches the same reduce-scatter as the embedding's. The last block stays gathered too,
    as backward needs it at once. A model already sharded is left as it is.
    """
    if isinstance(model, FSDPModule):
        return
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    last = len(model.blocks) - 1
    for i, block in enumerate(model.blocks):
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < last)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    register_fsdp_forward_method(model, "hidden_states")
