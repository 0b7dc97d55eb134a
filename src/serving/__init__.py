"""Serving: load a trained model once and stream text (the generate CLI and the app share it)."""

from src.serving.inference import load_pretrained

__all__ = ["load_pretrained"]
