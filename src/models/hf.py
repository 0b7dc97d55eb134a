"""The bridge to Hugging Face's Llama format: config and state-dict mapping, both ways.

A SmolLM2 checkpoint is a `LlamaForCausalLM`; our module names are shorter, so each
tensor name is rewritten by the table below. Reading validates everything a released
or exported folder could get wrong and names the file at fault.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from src.errors import UserError, first_line
from src.models.config import SmolLM2Config
from src.models.smollm2 import SmolLM2
from src.safe_load import load_weights_only

# (ours, Hugging Face's); "{i}" is the layer index.
NAME_MAP: list[tuple[str, str]] = [
    ("embed.weight", "model.embed_tokens.weight"),
    ("blocks.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
    ("blocks.{i}.attn.q_proj.weight", "model.layers.{i}.self_attn.q_proj.weight"),
    ("blocks.{i}.attn.k_proj.weight", "model.layers.{i}.self_attn.k_proj.weight"),
    ("blocks.{i}.attn.v_proj.weight", "model.layers.{i}.self_attn.v_proj.weight"),
    ("blocks.{i}.attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
    ("blocks.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
    ("blocks.{i}.mlp.gate_proj.weight", "model.layers.{i}.mlp.gate_proj.weight"),
    ("blocks.{i}.mlp.up_proj.weight", "model.layers.{i}.mlp.up_proj.weight"),
    ("blocks.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
    ("norm.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]


def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\{i\}", r"(\d+)") + "$")


_TO_HF = [(_compile(ours), hf) for ours, hf in NAME_MAP]
_FROM_HF = [(_compile(hf), ours) for ours, hf in NAME_MAP]


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        match = pattern.match(name)
        if match:
            return target.replace("{i}", match.group(1)) if match.groups() else target
    return None


def to_hf_state_dict(state_dict: dict[str, torch.Tensor], config: SmolLM2Config) -> dict[str, torch.Tensor]:
    """Our names -> Llama names. A tied LM head is left out, as transformers saves it."""
    out = {}
    for name, tensor in state_dict.items():
        if name == "lm_head.weight" and config.tie_embeddings:
            continue
        hf_name = _rename(name, _TO_HF)
        if hf_name is None:
            raise KeyError(f"no Hugging Face name for our tensor {name!r}")
        out[hf_name] = tensor
    return out


def from_hf_state_dict(
    state_dict: dict[str, torch.Tensor], config: SmolLM2Config, source: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Llama names -> our names, checking that every tensor is there with the right shape."""
    with torch.device("meta"):
        expected = {k: v.shape for k, v in SmolLM2(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
    out, unexpected = {}, []
    for hf_name, tensor in state_dict.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # older exports saved this buffer; we recompute it
        if hf_name == "lm_head.weight" and config.tie_embeddings:
            continue  # tied: the embedding is the head
        name = _rename(hf_name, _FROM_HF)
        if name is None or name not in expected:
            unexpected.append(hf_name)
            continue
        if tuple(tensor.shape) != tuple(expected[name]):
            raise UserError(
                f"{source}: tensor {hf_name} has shape {tuple(tensor.shape)}, "
                f"but config.json implies {tuple(expected[name])}"
            )
        out[name] = tensor
    missing = sorted(_rename(n, _TO_HF) or n for n in expected.keys() - out.keys())
    if missing:
        raise UserError(f"{source}: missing {len(missing)} tensor(s), e.g. {missing[:3]}")
    if unexpected:
        raise UserError(f"{source}: unexpected tensor(s) for a Llama model, e.g. {sorted(unexpected)[:3]}")
    return out


def to_hf_config(
    config: SmolLM2Config, bos_id: int = 0, eos_id: int = 0, dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """A `LlamaConfig` as a dict, with both rope and dtype spellings so transformers 4.x and 5.x
    read it; `dtype` is the stored weights'."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "initializer_range": config.init_std,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "use_cache": True,
        "torch_dtype": dtype_name,
        "dtype": dtype_name,
    }


# config.json fields we read, by the JSON type they must have (null means the default).
HF_INTEGERS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "head_dim",
)
HF_NUMBERS = ("rope_theta", "rms_norm_eps", "initializer_range")


def check_hf_types(hf: Any, source: str) -> None:
    """A hand-edited config.json fails here, naming the field, not deep inside the model's constructor."""
    if not isinstance(hf, dict):
        raise UserError(f"{source}: expected a JSON object of config fields, got a {type(hf).__name__}")
    for name, kinds, what in [
        *((name, int, "an integer") for name in HF_INTEGERS),
        *((name, (int, float), "a number") for name in HF_NUMBERS),
        ("tie_word_embeddings", bool, "true or false"),
        ("rope_parameters", dict, "an object"),
    ]:
        value = hf.get(name)
        if value is not None and (
            not isinstance(value, kinds) or (kinds is not bool and isinstance(value, bool))
        ):
            raise UserError(f"{source}: {name} must be {what}, got {value!r}")
    theta = (hf.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))):
        raise UserError(f"{source}: rope_parameters.rope_theta must be a number, got {theta!r}")


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> SmolLM2Config:
    """A Llama config.json dict -> our config; anything we do not implement is rejected."""
    check_hf_types(hf, source)
    if hf.get("model_type") != "llama":
        raise UserError(
            f"{source}: model_type is {hf.get('model_type')!r}, but only Llama-architecture "
            "(SmolLM2) checkpoints can be loaded"
        )
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    rope_type = rope.get("rope_type", "default")
    if scaling or rope_type != "default":
        raise UserError(f"{source}: RoPE scaling ({scaling or rope_type}) is not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: hidden_act {hf['hidden_act']!r} is not supported (only silu)")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise UserError(f"{source}: attention or MLP biases are not supported")
    try:
        config = SmolLM2Config(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads", hf["num_attention_heads"]),
            max_position_embeddings=hf["max_position_embeddings"],
            rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            tie_embeddings=hf.get("tie_word_embeddings", False),
            init_std=hf.get("initializer_range"),
        )
    except KeyError as err:
        raise UserError(f"{source}: required field {err.args[0]!r} is missing") from None
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim != config.head_dim:
        raise UserError(f"{source}: head_dim {head_dim} != hidden_size / num_attention_heads")
    return config


def read_hf_config(folder: Path) -> SmolLM2Config:
    path = folder / "config.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; a Hugging Face model folder needs config.json")
    try:
        hf = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    return from_hf_config(hf, source=str(path))


def read_generation_eos_ids(folder: Path) -> frozenset[int]:
    """The end ids of a folder's generation_config.json (`eos_token_id`: an int or a list); an
    instruct model ends its turn with one (`<|im_end|>`) that is not the tokenizer's EOS."""
    path = folder / "generation_config.json"
    if not path.is_file():
        return frozenset()
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise UserError(f"{path}: not a JSON object ({first_line(err)})") from None
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise UserError(f"{path}: eos_token_id must be a token id or a list of them, got {eos!r}")
    return frozenset(ids)


def read_hf_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a folder (single or sharded safetensors, or pytorch_model.bin)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(single), str(single)
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            tensors: dict[str, torch.Tensor] = {}
            for shard in shards:
                tensors.update(load_file(folder / shard))
            return tensors, str(index)
    except (SafetensorError, OSError, json.JSONDecodeError, KeyError) as err:
        raise UserError(f"{folder}: cannot read the safetensors weights ({err})") from None
    legacy = folder / "pytorch_model.bin"
    if legacy.is_file():
        return load_weights_only(legacy, what="weights file"), str(legacy)
    raise UserError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def write_hf_folder(
    model: torch.nn.Module,
    config: SmolLM2Config,
    out_dir: Path,
    bos_id: int = 0,
    eos_id: int = 0,
    dtype: torch.dtype = torch.float32,
) -> None:
    """config.json, generation_config.json and model.safetensors (weights in `dtype`) that
    transformers loads as is."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(dtype).contiguous().cpu()
        for k, v in to_hf_state_dict(model.state_dict(), config).items()
    }
    save_file(state, out_dir / "model.safetensors", metadata={"format": "pt"})
    hf_config = to_hf_config(config, bos_id, eos_id, dtype)
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def load_hf_model(folder: Path) -> SmolLM2:
    """Our SmolLM2 with config and weights from a Hugging Face SmolLM2/Llama folder, on the CPU.

    A released SmolLM2 folder (config.json + model.safetensors) loads unchanged.
    """
    config = read_hf_config(folder)
    hf_state, source = read_hf_weights(folder)
    state = from_hf_state_dict(hf_state, config, source=source)
    with torch.device("meta"):
        model = SmolLM2(config)
    model.load_state_dict(state, assign=True, strict=not config.tie_embeddings)
    if config.tie_embeddings:
        model.lm_head.weight = model.embed.weight  # assign=True replaced the shared Parameter
    model.rope = model.rope.to_empty(device="cpu")
    model.rope.reset_tables()
    return model
