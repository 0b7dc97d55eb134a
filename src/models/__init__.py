"""The SmolLM2 decoder, its generation loop and its Hugging Face bridge (pure PyTorch)."""

from src.models.config import SmolLM2Config
from src.models.generation import generate, generate_tokens
from src.models.smollm2 import SmolLM2

__all__ = ["SmolLM2", "SmolLM2Config", "generate", "generate_tokens"]
