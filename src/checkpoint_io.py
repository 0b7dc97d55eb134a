"""Checkpoint files written atomically: a temporary file in the same folder, fsync, rename."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


@contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block is done, then deliver it to the handler it would have met.

    A KeyboardInterrupt raised inside `torch.save` breaks its zip writer, which then raises
    an unrelated RuntimeError: the run would exit 1 with a traceback instead of 130.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)  # Python's default raises KeyboardInterrupt here


class AtomicCheckpointIO(TorchCheckpointIO):
    """A kill at any moment leaves either the old file or the new one, never half of one.

    A kill mid-write leaves a `.<name>.tmp-<pid>` file behind; the next save into the same
    folder removes it (only rank 0 writes, so no live writer owns another pid's file).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None
    ) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        for stale in path.parent.glob(".*.tmp-*"):  # left by a killed writer
            if not stale.name.endswith(f".tmp-{os.getpid()}"):
                stale.unlink(missing_ok=True)
        with sigint_deferred():
            try:
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)  # replaces a symlink itself, never writes through it
            finally:
                tmp.unlink(missing_ok=True)
