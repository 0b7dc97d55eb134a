"""Generate text from a Hugging Face folder or a training checkpoint.

python -m src.generate hf_path=<dir> prompt="Once upon a time" max_new_tokens=50 temperature=0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from src.cli import parse_cli
from src.data.tokenizer import load_tokenizer
from src.errors import UserError, exit_on_user_error
from src.models import generate_tokens, load_pretrained
from src.models.loading import CKPT_TOKENIZER, model_from_lightning_checkpoint, read_lightning_checkpoint


@dataclass
class GenerateConfig:
    prompt: str = ""
    hf_path: str | None = None
    ckpt_path: str | None = None
    tokenizer: str | None = None
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int = 1337


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(GenerateConfig, argv)
    if (cfg.hf_path is None) == (cfg.ckpt_path is None):
        raise UserError("give exactly one of hf_path=<Hugging Face folder> or ckpt_path=<.ckpt>")
    if not cfg.prompt:
        raise UserError('the prompt is empty: pass prompt="..."')
    if cfg.ckpt_path is not None:
        checkpoint = read_lightning_checkpoint(Path(cfg.ckpt_path))
        model = model_from_lightning_checkpoint(checkpoint)[0].eval()
        tokenizer = load_tokenizer(cfg.tokenizer or checkpoint.get(CKPT_TOKENIZER))
    else:
        model = load_pretrained(cfg.hf_path)
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.hf_path)
    input_ids = torch.tensor([tokenizer.encode(cfg.prompt)])
    new_tokens = [
        int(t)
        for t in generate_tokens(
            model,
            input_ids,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_k=cfg.top_k,
            top_p=cfg.top_p,
            eos_id=tokenizer.eos_token_id,
            seed=cfg.seed,
        )
    ]
    if new_tokens and new_tokens[-1] == tokenizer.eos_token_id:
        new_tokens.pop()
    sys.stdout.write(tokenizer.decode(new_tokens) + "\n")


if __name__ == "__main__":
    main()
