"""The decoder's hyperparameters; the named presets are the files `conf/model/<preset>.yaml`.

Those files hold exactly these fields (a test checks it), so a run's config can always be
rebuilt from the YAML saved next to its checkpoints, and a preset is defined once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from importlib import resources
from typing import Any

from omegaconf import OmegaConf

from src.errors import UserError

PRESET_DIR = resources.files("src") / "conf" / "model"


def preset_names() -> list[str]:
    """The names `model=<name>` accepts: the YAML files of src/conf/model, sorted."""
    return sorted(f.name.removesuffix(".yaml") for f in PRESET_DIR.iterdir() if f.name.endswith(".yaml"))


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


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
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserError(f"model.{name} must be a positive integer, got {value!r}")
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
        for name in ("rope_theta", "rms_norm_eps", "init_std"):
            value = getattr(self, name)
            if (value is not None or name != "init_std") and not _finite_positive(value):
                raise UserError(f"model.{name} must be a finite number > 0, got {value!r}")
        if self.init_std is None:
            self.init_std = 1.0 / math.sqrt(self.hidden_size)

    def check_context(self, num_tokens: int, what: str, fix: str) -> None:
        """The one check that `what`, `num_tokens` positions long, fits the context window."""
        if num_tokens > self.max_position_embeddings:
            raise UserError(
                f"{what} exceeds the model's context of {self.max_position_embeddings} tokens "
                f"(model.max_position_embeddings): {fix}"
            )

    def num_parameters(self) -> int:
        """Parameters of the decoder this config builds, counted once (a tied head is the embedding).

        From the config alone, so a sharded model is counted whole.
        """
        c, i, kv = self.hidden_size, self.intermediate_size, self.num_kv_heads * self.head_dim
        attention = 2 * c * c + 2 * c * kv  # q, o and k, v projections
        block = attention + 3 * c * i + 2 * c  # + SwiGLU's three matrices + two norms
        embeddings = self.vocab_size * c * (1 if self.tie_embeddings else 2)
        return embeddings + self.num_layers * block + c  # + the final norm

    def training_flops_per_token(self, seq_len: int) -> int:
        """6N for the weight matmuls (forward + backward, N with the head) plus 12·L·C·T for
        attention's scores and weighted sums (PaLM, appendix B): the FLOPs MFU counts."""
        return 6 * self.num_parameters() + 12 * self.num_layers * self.hidden_size * seq_len

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
        """The config `model=<name>` selects, parsed by OmegaConf as Hydra parses it
        (plain PyYAML would read `1e-05` as a string)."""
        presets = preset_names()
        if name not in presets:
            raise UserError(f"unknown model preset {name!r}; choose one of {presets}")
        values = OmegaConf.to_container(OmegaConf.create((PRESET_DIR / f"{name}.yaml").read_text()))
        values.pop("_target_")
        return cls.from_dict(values)
