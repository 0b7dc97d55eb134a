"""Files that torch.save wrote, read without running code in them.

`torch.load(weights_only=True)` rebuilds only tensors, containers and plain values: what our
checkpoints (loop and data state included) and Hugging Face's `pytorch_model.bin` hold. A
file that needs more (a pickled function or class: code that would run as it loads) is
refused unread, naming what it would import.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from src.errors import UserError, first_line

ZIP_MAGIC = b"PK\x03\x04"  # the first bytes of every file torch.save writes (a zip archive)
# How torch.load(weights_only=True) begins its message for a file that needs more than it allows.
WEIGHTS_ONLY_FAILED = "Weights only load failed"


def load_weights_only(path: Path, what: str = "checkpoint", **kwargs: Any) -> Any:
    """`path` read with `weights_only=True`: a file that would run code is refused unread, and one
    that cannot be read is a one-line error calling it a `what` (a checkpoint, a weights file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError) as err:
        if isinstance(err, pickle.UnpicklingError) and str(err).startswith(WEIGHTS_ONLY_FAILED):
            why = (
                "src.train never writes such objects, so this is not one of our checkpoints"
                if what == "checkpoint"
                else f"no {what} needs such objects"
            )
            raise UserError(
                f"{path}: refused: it holds {_unsafe_globals(path, err)}, which only code in the file could "
                f"rebuild; {why}"
            ) from None
        if _magic(path) != ZIP_MAGIC:  # torch's own message advises on how to save, not on what this is
            not_zip = "torch.save writes zip archives; this is none"
            raise UserError(f"{path}: not a {what} ({not_zip})") from None
        reason = first_line(err)
        raise UserError(f"{path}: not a readable {what}, it may be truncated ({reason})") from None


def _magic(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(len(ZIP_MAGIC))
    except OSError:
        return b""


def _unsafe_globals(path: Path, err: pickle.UnpicklingError) -> str:
    """The types and functions the file would import, listed without unpickling anything."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError):
        names = []
    if names:
        return ", ".join(names)
    match = re.search(r"WeightsUnpickler error: ([^\n]*)", str(err))
    return match.group(1).rstrip(".") if match else "objects torch's weights-only loader refuses"
