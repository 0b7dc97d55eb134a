"""Training-time transformations of a built model, applied from outside it as torchtitan does.

Both work in place, block by block, so the module tree and the state-dict keys stay
those of the plain model: a checkpoint written with either loads into a plain model,
and a run can resume with them switched on or off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
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
    start: int = 0,
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
