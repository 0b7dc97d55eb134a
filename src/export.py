"""Export a training checkpoint as a Hugging Face folder that `from_pretrained` loads offline.

python -m src.export ckpt_path=<run>/checkpoints/last.ckpt [out_dir=<dir>] [overwrite=true] [dtype=bfloat16]

Without out_dir the folder is outputs/export/<run>-step<N> (src/outputs.py): runs stay in logs/,
what is made from them goes under outputs/.

A sharded checkpoint (trainer=fsdp: `last.ckpt` is a folder) exports the same way, in one
process: its shards are gathered on the CPU.

Export never destroys: the files are written into a hidden folder beside `out_dir` and
renamed into place, so a failure (a full disk, an exception, Ctrl-C) leaves the old folder
as it was, or nothing. A non-empty `out_dir` is replaced, whole, only with overwrite=true.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING
from safetensors import SafetensorError

from src.cli import parse_cli
from src.data.tokenizer import load_tokenizer
from src.errors import UserError, exit_on_user_error, first_line, os_error_reason
from src.models.hf import write_hf_folder
from src.outputs import default_output_dir
from src.serving.inference import resolve_dtype
from src.training import checkpoint as ckpt


@dataclass
class ExportConfig:
    ckpt_path: str = MISSING
    out_dir: str = ""  # empty: outputs/export/<run>-step<N>
    overwrite: bool = False
    dtype: str = "float32"  # the stored weights': float32 (as trained), or bfloat16 (half the size)


def default_out_dir(ckpt_path: Path) -> Path:
    """outputs/export/<run folder's name>-step<N>: each run and step has its own folder."""
    path = ckpt_path.resolve()
    name = path.parent.parent.name if path.parent.name == "checkpoints" else path.stem
    step = ckpt.read_checkpoint(path, weights=False).get("global_step")  # weights stay unread
    return default_output_dir("export") / (name if step is None else f"{name}-step{step}")


def check_out_dir(out_dir: Path, ckpt_path: Path, overwrite: bool) -> None:
    """Refuse, before the checkpoint is read, a target that export would destroy or cannot write."""
    if out_dir == ckpt_path or out_dir in ckpt_path.parents:
        raise UserError(f"out_dir={out_dir} holds ckpt_path; pick another out_dir")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"out_dir={out_dir} is a file, not a folder; pick another out_dir")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(
            f"out_dir={out_dir} is not empty; add overwrite=true to replace it whole, or pick another out_dir"
        )
    ancestor = next(folder for folder in out_dir.parents if folder.exists())
    if not ancestor.is_dir():
        raise UserError(f"out_dir={out_dir} is under {ancestor}, which is a file; pick another out_dir")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"out_dir={out_dir}: {ancestor} is not writable; pick a writable out_dir")


def write_folder_in_place(out_dir: Path, write: Callable[[Path], None]) -> None:
    """`write` into a hidden folder beside `out_dir`, then rename it into place: readers see the
    old folder or the new one, never a mix, and a failure removes the hidden folder."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{secrets.token_hex(4)}"
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{tag}")
    tmp.mkdir()
    try:
        write(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{tag}")
            os.rename(out_dir, old)
            try:
                os.rename(tmp, out_dir)
            except BaseException:
                os.rename(old, out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)  # the new folder is in place already
        else:
            os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def why(err: Exception) -> str:
    """An OSError as its errno name, message and file (`ENOSPC: No space left on device: <file>`)."""
    if isinstance(err, OSError) and err.errno is not None:
        return os_error_reason(err) + (f": {err.filename}" if err.filename else "")
    return first_line(err)


def export_checkpoint(
    ckpt_path: Path, out_dir: Path, overwrite: bool = False, dtype: torch.dtype = torch.float32
) -> None:
    """Weights (in `dtype`), config.json, generation_config.json and the run's tokenizer files
    into `out_dir`."""
    out_dir = out_dir.resolve()
    check_out_dir(out_dir, ckpt_path.resolve(), overwrite)
    checkpoint = ckpt.read_checkpoint(ckpt_path)
    model, config = ckpt.model_from_checkpoint(checkpoint)
    tokenizer = load_tokenizer(checkpoint.get(ckpt.TOKENIZER))
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos

    def write(folder: Path) -> None:
        write_hf_folder(model, config, folder, bos_id=bos, eos_id=eos, dtype=dtype)
        tokenizer.save_pretrained(folder)

    try:
        write_folder_in_place(out_dir, write)
    except (OSError, SafetensorError) as err:
        raise UserError(f"cannot write out_dir={out_dir} ({why(err)}); it is as it was before") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(ExportConfig, argv)
    dtype = resolve_dtype(cfg.dtype)
    ckpt_path = Path(cfg.ckpt_path)
    out_dir = Path(cfg.out_dir) if cfg.out_dir else default_out_dir(ckpt_path)
    export_checkpoint(ckpt_path, out_dir, cfg.overwrite, dtype)
    print(f"wrote {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
