"""`load_pretrained`: our model from a Hugging Face folder or one of our Lightning checkpoints."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from src.errors import UserError
from src.models.config import SmolLM2Config
from src.models.hf import from_hf_state_dict, read_hf_config, read_hf_weights
from src.models.smollm2 import SmolLM2

# Where our LightningModule keeps things in a checkpoint (it writes them; we read them here).
CKPT_MODEL_CONFIG = "model_config"
CKPT_TOKENIZER = "tokenizer"
STATE_DICT_PREFIX = "model."


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with a one-line error for a missing, truncated or foreign file."""
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        # Our own checkpoints hold plain Python objects next to tensors (loop and data state).
        checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        raise UserError(f"{path}: not a readable checkpoint, it may be truncated ({err})") from None
    if (
        not isinstance(checkpoint, dict)
        or CKPT_MODEL_CONFIG not in checkpoint
        or "state_dict" not in checkpoint
    ):
        raise UserError(f"{path}: not a checkpoint written by src.train (no model config or state_dict)")
    return checkpoint


def model_from_lightning_checkpoint(checkpoint: dict[str, Any]) -> tuple[SmolLM2, SmolLM2Config]:
    config = SmolLM2Config.from_dict(checkpoint[CKPT_MODEL_CONFIG])
    state = {
        k.removeprefix(STATE_DICT_PREFIX): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith(STATE_DICT_PREFIX)
    }
    model = SmolLM2(config)
    model.load_state_dict(state)
    return model, config


def load_pretrained(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> SmolLM2:
    """Our model, with config and weights from a Hugging Face SmolLM2/Llama folder or a `.ckpt`.

    A released SmolLM2 folder (config.json + model.safetensors) loads unchanged.
    """
    path = Path(path)
    if path.is_dir():
        config = read_hf_config(path)
        hf_state, source = read_hf_weights(path)
        state = from_hf_state_dict(hf_state, config, source=source)
        with torch.device("meta"):
            model = SmolLM2(config)
        model.load_state_dict(state, assign=True, strict=not config.tie_embeddings)
        if config.tie_embeddings:
            model.lm_head.weight = model.embed.weight  # assign=True replaced the shared Parameter
        model.rope = model.rope.to_empty(device="cpu")
        model.rope.reset_tables()
    elif path.is_file():
        model, _ = model_from_lightning_checkpoint(read_lightning_checkpoint(path))
    else:
        raise UserError(f"{path}: no such file or folder (give a Hugging Face model folder or a .ckpt)")
    return model.to(device=device, dtype=dtype).eval()
