"""Export a training checkpoint as a Hugging Face folder that `from_pretrained` loads offline.

python -m src.export ckpt_path=<run>/checkpoints/last.ckpt out_dir=<dir>

A sharded checkpoint (trainer=fsdp: `last.ckpt` is a folder) exports the same way, in one
process: its shards are gathered on the CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from src.cli import parse_cli
from src.data.tokenizer import load_tokenizer
from src.errors import exit_on_user_error
from src.models.hf import write_hf_folder
from src.training import checkpoint as ckpt


@dataclass
class ExportConfig:
    ckpt_path: str = MISSING
    out_dir: str = MISSING


def export_checkpoint(ckpt_path: Path, out_dir: Path) -> None:
    """Weights, config.json, generation_config.json and the run's tokenizer files into `out_dir`."""
    checkpoint = ckpt.read_checkpoint(ckpt_path)
    model, config = ckpt.model_from_checkpoint(checkpoint)
    tokenizer = load_tokenizer(checkpoint.get(ckpt.TOKENIZER))
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    write_hf_folder(model, config, out_dir, bos_id=bos, eos_id=eos)
    tokenizer.save_pretrained(out_dir)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(ExportConfig, argv)
    export_checkpoint(Path(cfg.ckpt_path), Path(cfg.out_dir))
    print(f"wrote {cfg.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
