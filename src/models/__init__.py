"""The SmolLM2 decoder, its generation loop and its Hugging Face bridge (pure PyTorch)."""

from src.models.config import PRESETS, SmolLM2Config
from src.models.generation import generate, generate_tokens
from src.models.loading import load_pretrained
from src.models.smollm2 import SmolLM2

__all__ = ["PRESETS", "SmolLM2", "SmolLM2Config", "generate", "generate_tokens", "load_pretrained"]
