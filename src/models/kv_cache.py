"""Preallocated key/value cache for incremental decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from src.errors import UserError


@dataclass
class LayerKVCache:
    """Keys and values of one layer, (B, K, max_tokens, D), filled from position 0 up."""

    keys: torch.Tensor
    values: torch.Tensor

    def update(
        self, k: torch.Tensor, v: torch.Tensor, start: int | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v (B, K, T, D) at positions start..start+T-1; return all S = start+T so far.

        With a tensor `start` (1 element), return the whole cache instead: the shapes then stay
        the same at every position (compilation, CUDA graphs) and the caller masks the tail.
        """
        if isinstance(start, torch.Tensor):
            positions = start + torch.arange(k.shape[2], device=start.device)  # (T,)
            self.keys.index_copy_(2, positions, k)
            self.values.index_copy_(2, positions, v)
            return self.keys, self.values
        end = start + k.shape[2]
        if end > self.keys.shape[2]:
            raise UserError(f"KV cache holds {self.keys.shape[2]} tokens; position {end} does not fit")
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]


@dataclass
class KVCache:
    layers: list[LayerKVCache]

    @classmethod
    def empty(
        cls,
        *,
        num_layers: int,
        batch_size: int,
        num_kv_heads: int,
        max_tokens: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> KVCache:
        shape = (batch_size, num_kv_heads, max_tokens, head_dim)
        return cls(
            [
                LayerKVCache(
                    torch.zeros(shape, device=device, dtype=dtype),
                    torch.zeros(shape, device=device, dtype=dtype),
                )
                for _ in range(num_layers)
            ]
        )

    @property
    def max_tokens(self) -> int:
        return self.layers[0].keys.shape[2]
