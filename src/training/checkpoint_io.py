"""Lightning's CheckpointIO for our files: written atomically, read weights-only.

The format and both operations are src/training/checkpoint.py's, which imports no Lightning:
the commands that only read checkpoints (generate, export, evaluate, the app) do not wait for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from src.safe_load import load_weights_only
from src.training.checkpoint import write_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """`trainer.fit`'s saves and its `ckpt_path` read: atomic writes; weights only, one-line errors."""

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: Any = None) -> Any:
        return load_weights_only(Path(path))  # weights_only=True whatever the caller asks

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        write_atomically(checkpoint, Path(path))
