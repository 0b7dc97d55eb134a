"""The decoder's hyperparameters and the named SmolLM2 presets.

`conf/model/<preset>.yaml` mirrors these fields exactly (a test checks it), so a run's
config can always be rebuilt from the YAML saved next to its checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from src.errors import UserError


@dataclass
class SmolLM2Config:
    """Architecture of a SmolLM2 (Llama-style) decoder.

    `init_std=None` means 1/sqrt(hidden_size), SmolLM2's `initializer_range`.
    """

    vocab_size: int = 49152
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_layers: int = 30
    num_heads: int = 9
    num_kv_heads: int = 3
    max_position_embeddings: int = 8192
    rope_theta: float = 100000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise UserError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise UserError(
                f"model.hidden_size={self.hidden_size} is not divisible by "
                f"model.num_heads={self.num_heads}: pick a head count that divides it"
            )
        if self.num_heads % self.num_kv_heads:
            raise UserError(
                f"model.num_heads={self.num_heads} is not divisible by "
                f"model.num_kv_heads={self.num_kv_heads}: grouped-query attention needs "
                "a whole number of query heads per KV head"
            )
        if self.head_dim % 2:
            raise UserError(
                f"head dim {self.head_dim} (hidden_size / num_heads) must be even for rotary embeddings"
            )
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise UserError("model.rope_theta and model.rms_norm_eps must be positive")
        if self.init_std is None:
            self.init_std = 1.0 / math.sqrt(self.hidden_size)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SmolLM2Config:
        """Build from a dict, rejecting unknown keys with a message that lists them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown model config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_preset(cls, name: str) -> SmolLM2Config:
        if name not in PRESETS:
            raise UserError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[name])


# These match the configs of the checkpoints Hugging Face released as
# HuggingFaceTB/SmolLM2-{135M,360M,1.7B} (LlamaForCausalLM, tied embeddings).
PRESETS: dict[str, dict[str, Any]] = {
    "smollm2_135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        rope_theta=100000.0,
    ),
    "smollm2_360m": dict(
        hidden_size=960,
        intermediate_size=2560,
        num_layers=32,
        num_heads=15,
        num_kv_heads=5,
        rope_theta=100000.0,
    ),
    "smollm2_1.7b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_layers=24,
        num_heads=32,
        num_kv_heads=32,
        rope_theta=130000.0,
    ),
    # For tests and CPU runs: the real vocabulary, a toy trunk.
    "tiny": dict(
        hidden_size=64,
        intermediate_size=192,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=100000.0,
        max_position_embeddings=2048,
    ),
}
