"""The SmolLM2 decoder in plain PyTorch: RMSNorm, RoPE, grouped-query attention, SwiGLU.

Read top to bottom: norm, rotary embedding, attention (with an optional KV cache),
MLP, block, model. Shapes: B batch, T tokens in this call, S cached + new tokens,
C hidden size, H query heads, K key/value heads, D head dim, V vocabulary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from src.models.config import SmolLM2Config
from src.models.kv_cache import KVCache, LayerKVCache


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in fp32 as Llama does, then cast back."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), x.shape[-1:], eps=self.eps)  # x / sqrt(mean(x²) + eps)
        return self.weight * normed.to(x.dtype)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for every position, cached once as non-persistent buffers."""

    def __init__(self, head_dim: int, max_positions: int, theta: float) -> None:
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, theta
        cos, sin = self._tables()
        self.register_buffer("cos", cos, persistent=False)  # (max_positions, D)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = 1.0 / (
            self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim)
        )
        positions = torch.arange(self.max_positions, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)  # (max_positions, D/2)
        angles = torch.cat((freqs, freqs), dim=-1)  # (max_positions, D)
        return angles.cos(), angles.sin()

    def reset_tables(self) -> None:
        """Recompute the tables, e.g. after the model was built on the meta device."""
        cos, sin = self._tables()
        self.cos, self.sin = cos.to(self.cos.device), sin.to(self.sin.device)

    def forward(self, start: int | torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows start..start+length-1; `start` may be a 1-element tensor on the tables' device."""
        if isinstance(start, torch.Tensor):
            positions = start + torch.arange(length, device=start.device)  # (T,)
            return self.cos[positions], self.sin[positions]
        return self.cos[start : start + length], self.sin[start : start + length]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + D/2) of x (B, T, heads, D) by position-dependent angles.

    `x * cos + rotate_half(x) * sin`, as in Llama; the multiply-add is one addcmul, whose
    rounding (not quite that of `*` then `+`) this model has always had.
    """
    cos, sin = cos[:, None].to(x.dtype), sin[:, None].to(x.dtype)  # (T, 1, D), broadcast over B, heads
    return torch.addcmul(x * cos, rotate_half(x), sin)


def fused_kernel_takes_gqa(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether SDPA's fused kernel for these inputs accepts fewer key/value heads than query heads.

    CPU's flash kernel does in every dtype; on CUDA flash and cuDNN's attention do (PyTorch
    puts cuDNN first on Hopper and later with cuDNN 9.15 or newer), and both take 16-bit
    inputs only: fp32 with `enable_gqa` would run SDPA's slow math kernel instead of the
    memory-efficient one. Elsewhere (MPS, XPU) nothing is assumed.
    """
    return device.type == "cpu" or (device.type == "cuda" and dtype in (torch.float16, torch.bfloat16))


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, is_causal: bool) -> torch.Tensor:
    """SDPA of q (B, H, T, D) over k, v (B, K, S, D), H/K query heads per key/value head.

    Where the fused kernel takes the groups, K and V are passed as they are; elsewhere they
    are repeated to H heads (query head h reads key/value head h // (H/K), as `enable_gqa`
    does), which gives the same result from a fused kernel.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and not fused_kernel_takes_gqa(q.device, q.dtype):
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)  # (B, H, S, D)
    return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=q.shape[1] != k.shape[1])


def masked_grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA of q (B, H, T, D) over k, v (B, K, S, D) where query t sees the keys `mask` (T, S)
    allows, or every key (`mask` None).

    The H/K query heads of a group become rows of one query block (B, K, G*T, D) against
    their shared keys: every kernel takes that, and K, V (a whole KV cache when decoding)
    are never copied. For one query (T = 1) the rows share one mask row, broadcast.
    """
    B, H, T, D = q.shape
    groups = H // k.shape[1]
    rows = q.reshape(B, k.shape[1], groups * T, D)  # row g*T + t: head k*G + g, query t
    if mask is not None and T > 1:
        mask = mask.repeat(groups, 1)  # (G*T, S)
    y = F.scaled_dot_product_attention(rows, k, v, attn_mask=mask)  # (B, K, G*T, D)
    return y.view(B, H, T, D)


class ScaledDotProductAttention(nn.Module):
    """Causal attention of q (B, H, T, D) over k, v (B, K, T, D) -> (B, H, T, D).

    A module of its own, without parameters, so that a converter can swap in another
    implementation of the same function.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return grouped_attention(q, k, v, is_causal=True)


class Attention(nn.Module):
    """Causal grouped-query self-attention: K key/value heads shared by H/K query heads each."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        c, kv = config.hidden_size, config.num_kv_heads * config.head_dim
        self.q_proj = nn.Linear(c, c, bias=False)
        self.k_proj = nn.Linear(c, kv, bias=False)
        self.v_proj = nn.Linear(c, kv, bias=False)
        self.o_proj = nn.Linear(c, c, bias=False)
        self.sdpa = ScaledDotProductAttention()

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerKVCache | None = None,
        start: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim)  # (B, T, H, D)
        k = self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, K, D)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)  # (B, T, K, D)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D), (B, K, T, D)
        if cache is None:
            y = self.sdpa(q, k, v)  # (B, H, T, D)
        else:
            y = self._cached(q, k, v, cache, start)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))

    def _cached(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: LayerKVCache,
        start: int | torch.Tensor,
    ) -> torch.Tensor:
        """The new queries attend to the cached keys and values plus their own -> (B, H, T, D).

        A tensor `start` (decoding that never reads the position on the host) attends over
        the whole cache, its unwritten tail masked out, so every step has the same shapes.
        """
        T = q.shape[2]
        k, v = cache.update(k, v, start)  # (B, K, S, D): S = start + T, or the whole cache
        if not isinstance(start, torch.Tensor) and start == 0:
            return grouped_attention(q, k, v, is_causal=True)  # the prompt
        if not isinstance(start, torch.Tensor) and T == 1:
            return masked_grouped_attention(q, k, v, None)  # one token seeing every cached key
        # New queries sit at positions start..start+T-1 and see every key up to their own.
        key_pos = torch.arange(k.shape[2], device=q.device)
        query_pos = start + torch.arange(T, device=q.device)
        return masked_grouped_attention(q, k, v, key_pos[None, :] <= query_pos[:, None])  # mask (T, S)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        c, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(c, i, bias=False)
        self.up_proj = nn.Linear(c, i, bias=False)
        self.down_proj = nn.Linear(i, c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: LayerKVCache | None = None,
        start: int | torch.Tensor = 0,
    ) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, start)
        return x + self.mlp(self.mlp_norm(x))


class SmolLM2(nn.Module):
    """Token embedding, a stack of blocks, final norm, LM head (tied to the embedding)."""

    def __init__(self, config: SmolLM2Config) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rope = RotaryEmbedding(config.head_dim, config.max_position_embeddings, config.rope_theta)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight  # one tensor, counted once
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """SmolLM2's init: N(0, std) for inputs, std/sqrt(2L) for residual outputs, norms at 1."""
        std = self.config.init_std
        out_std = std / math.sqrt(2 * self.config.num_layers)
        for name, module in self.named_modules():
            if isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.Linear) and not (name == "lm_head" and self.config.tie_embeddings):
                is_output = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=out_std if is_output else std)
        self.rope.reset_tables()

    def num_parameters(self) -> int:
        """Unique parameters (a tied embedding counts once)."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(
        self, input_ids: torch.Tensor, cache: KVCache | None = None, start: int | torch.Tensor = 0
    ) -> torch.Tensor:
        """The trunk: (B, T) token ids -> (B, T, C) normed hidden states, before the LM head.

        A tensor `start` (1 element, on the model's device) is for decoding into a cache
        that already fits the context: the position is not read back to check it.
        """
        T = input_ids.shape[1]
        if not isinstance(start, torch.Tensor):
            self.config.check_context(start + T, f"a sequence of {start + T} tokens", "use shorter sequences")
        cos, sin = self.rope(start, T)  # (T, D)
        x = self.embed(input_ids)  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, cache.layers[i] if cache is not None else None, start)
        return self.norm(x)

    def forward(
        self, input_ids: torch.Tensor, cache: KVCache | None = None, start: int | torch.Tensor = 0
    ) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits. With a cache, `start` is the first token's position."""
        return self.lm_head(self.hidden_states(input_ids, cache, start))

    def new_kv_cache(self, batch_size: int, max_tokens: int) -> KVCache:
        """An empty cache for `max_tokens` positions, on the model's device and dtype."""
        self.config.check_context(max_tokens, f"a KV cache of {max_tokens} tokens", "ask for fewer tokens")
        weight = self.embed.weight
        return KVCache.empty(
            num_layers=self.config.num_layers,
            batch_size=batch_size,
            num_kv_heads=self.config.num_kv_heads,
            max_tokens=max_tokens,
            head_dim=self.config.head_dim,
            device=weight.device,
            dtype=weight.dtype,
        )
