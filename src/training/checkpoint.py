"""The checkpoint format, in one place: what our `.ckpt` files hold, how they are read and written.

A checkpoint is Lightning's (weights under `state_dict`, optimizer, loops, callbacks, data
position) plus the run facts below, which let a file be used on its own: rebuild the
model, detokenize, continue the same W&B run, LR schedule and config. Files are written
atomically: a temporary file in the same folder, fsync, rename. Nothing here imports Lightning at
import (src/training/checkpoint_io.py plugs the reading and writing into the trainer), so
the commands that only read a checkpoint start without it.

Under trainer=fsdp a checkpoint is a folder instead (Lightning's sharded format): each
rank's shards in torch.distributed.checkpoint files, everything else in one small file
(`meta.pt`). The readers here take either, and gather a sharded model's weights whole.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from src.errors import UserError, find_cause, os_error_reason
from src.files import TMP_MARK, temp_path
from src.models.config import SmolLM2Config
from src.models.smollm2 import SmolLM2
from src.safe_load import load_weights_only
from src.training.run_folder import pid_alive

# Keys our LightningModule adds beside Lightning's own.
MODEL_CONFIG = "model_config"  # SmolLM2Config as a dict
TOKENIZER = "tokenizer"  # data.tokenizer (None = the vendored SmolLM2 tokenizer)
WANDB_RUN_ID = "wandb_run_id"  # continuations log to the same W&B run
LR_SCHEDULE = "lr_schedule"  # LRSchedule as a dict, horizon included
OVERRIDES = "cli_overrides"  # the run's command-line overrides, replayed by a continuation
SKIPPED_STEPS = "nonfinite_skipped"  # updates skipped by nonfinite=skip
SPIKE = "spike"  # the loss-spike guard: rollbacks, rewound steps, its running statistic
CPU_KERNELS = "cpu_kernels"  # the kernels the run kept, for which machine and shapes (KernelRecord)
TOKENS_SEEN = "tokens_seen"  # tokens the optimizer steps so far trained on, all processes
VAL_WINDOWS = "val_windows"  # the windows the last validation read, all processes
# The LightningModule holds the decoder as `self.model`, so its weights are `model.<name>`.
MODEL_PREFIX = "model."
# The file of a sharded checkpoint's folder that holds everything but the tensors: Lightning's
# name for it (tests/test_lightning_compat.py checks), here so that reading one needs no Lightning.
SHARDED_METADATA = "meta.pt"


# Overrides that older checkpoints store, as today's config spells them (None: drop it, it
# is today's default). conf/schedule/ had one file per kind until it became one file with
# a `kind` key; the periodic checkpoint's interval, which last.ckpt followed, became the
# top-level `checkpoint_every`; the process-wide `cpu_kernels` switch became the `kernels` list;
# `cpu_malloc_cache` took the name of what it does, `keep_freed_host_memory`.
RENAMED_OVERRIDES: dict[str, str | None] = {
    **{f"schedule={kind}": f"schedule.kind={kind}" for kind in ("constant", "cosine", "linear", "wsd")},
    "cpu_kernels=false": "kernels=[]",
    "cpu_kernels=true": None,
}
RENAMED_KEYS = {
    "callbacks.model_checkpoint.every_n_train_steps": "checkpoint_every",
    "cpu_malloc_cache": "keep_freed_host_memory",
}


def tokens_seen(checkpoint: dict[str, Any], tokens_per_step: int) -> int:
    """Tokens the checkpoint's optimizer steps trained on. A checkpoint from before the count was
    kept is taken to have had `tokens_per_step`, today's global batch, all along."""
    return checkpoint.get(TOKENS_SEEN, checkpoint["global_step"] * tokens_per_step)


def migrate_overrides(overrides: list[str]) -> list[str]:
    """A checkpoint's stored overrides in today's config shape, so a continuation can replay them."""
    migrated = []
    for override in overrides:
        key, _, value = override.partition("=")
        if key in RENAMED_KEYS:
            override = f"{RENAMED_KEYS[key]}={value}"
        override = RENAMED_OVERRIDES.get(override, override)
        if override is not None:
            migrated.append(override)
    return migrated


def is_sharded(path: Path) -> bool:
    """Whether `path` is a sharded checkpoint's folder (trainer=fsdp) rather than a file."""
    return path.is_dir() and (path / SHARDED_METADATA).is_file()


def last_checkpoint_in(path: Path) -> Path | None:
    """The `last.ckpt` that a run folder or its `checkpoints/` folder holds, to name in an error
    when such a folder is given where a checkpoint (or a Hugging Face folder) is expected."""
    for last in (path / "checkpoints" / "last.ckpt", path / "last.ckpt"):
        if last.exists():
            return last
    return None


def read_checkpoint(path: Path, weights: bool = True) -> dict[str, Any]:
    """A `.ckpt` file or sharded folder, with a one-line error for a missing, truncated or foreign one.

    `weights=False` may leave out `state_dict` (a sharded folder's tensors are then not read).
    """
    if is_sharded(path):
        checkpoint = _read_sharded(path, weights)
    elif path.is_file():
        checkpoint = load_weights_only(path, mmap=True)  # mmap: weights are only read when used
    elif (last := last_checkpoint_in(path)) is not None:
        kind = "run" if last.parent != path else "checkpoints"
        raise UserError(f"{path} is a {kind} folder; pass its checkpoint, {last}")
    elif path.is_dir():
        raise UserError(f"{path}: checkpoint not found (a folder, but without {SHARDED_METADATA})")
    else:
        raise UserError(f"{path}: checkpoint not found; check the path (a run's are in <run>/checkpoints/)")
    if not isinstance(checkpoint, dict) or MODEL_CONFIG not in checkpoint:
        raise UserError(f"{path}: not a checkpoint written by src.train (no model config)")
    if weights and "state_dict" not in checkpoint:
        raise UserError(f"{path}: not a checkpoint written by src.train (no state_dict)")
    return checkpoint


def _read_sharded(path: Path, weights: bool) -> dict[str, Any]:
    """A sharded folder's metadata, plus with `weights` its `state_dict` gathered whole on the CPU.

    Only the model's tensors are read (not the optimizer's), in this one process.
    """
    checkpoint = load_weights_only(path / SHARDED_METADATA)
    if not weights:
        return checkpoint
    # Imported here, where a sharded folder's tensors are read: 0.6 s that a config check, a
    # .ckpt file's reader (generate, export, the app) or a metadata read does without.
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        reader = dcp.FileSystemReader(path)
        stored = reader.read_metadata().state_dict_metadata
        state = {
            key.removeprefix("state_dict."): torch.empty(meta.size, dtype=meta.properties.dtype)
            for key, meta in stored.items()
            if key.startswith("state_dict.") and isinstance(meta, TensorStorageMetadata)
        }
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            dcp.load({"state_dict": state}, storage_reader=reader, no_dist=True)
    except (dcp.CheckpointException, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        if isinstance(err, dcp.CheckpointException):  # one per rank that failed, here the one process
            err = next(iter(err.failures.values()))[0]
        raise UserError(f"{path}: not a readable sharded checkpoint, it may be truncated ({err})") from None
    checkpoint["state_dict"] = state
    return checkpoint


def model_state_dict(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The decoder's own state dict (keys as in `SmolLM2.state_dict()`)."""
    state = checkpoint["state_dict"]
    return {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def model_from_checkpoint(checkpoint: dict[str, Any]) -> tuple[SmolLM2, SmolLM2Config]:
    config = SmolLM2Config.from_dict(checkpoint[MODEL_CONFIG])
    model = SmolLM2(config)
    model.load_state_dict(model_state_dict(checkpoint))
    return model, config


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block is done, then deliver them to the handlers they
    would have met.

    An exception raised inside `torch.save` breaks its zip writer, which then raises an
    unrelated RuntimeError: the run would exit 1 with a traceback instead of 130 or 143.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread receives signals
        return
    received: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    for signum in dict.fromkeys(received):
        signal.raise_signal(signum)  # runs the restored handler here (Ctrl-C: KeyboardInterrupt)


class CheckpointWriteFailed(UserError):
    """A checkpoint could not be written (a full disk, a lost mount); the previous file is intact."""


def left_by_a_dead_writer(tmp: Path) -> bool:
    """Whether `tmp`'s writer is gone: a process of this host no longer alive. Files named by
    pid alone (written before the host was added) count as this host's."""
    owner = tmp.name.rsplit(TMP_MARK, 1)[1]
    host, _, pid = owner.rpartition("-")
    if not pid.isdigit() or host not in ("", socket.gethostname()):
        return False
    return not pid_alive(int(pid))


def write_atomically(checkpoint: dict[str, Any], path: Path) -> None:
    """A kill at any moment leaves either the old file or the new one, never half of one.

    A kill mid-write leaves a `.<name>.tmp-<host>-<pid>` file behind; a later save into the
    same folder removes it once that process is gone. Another live process's file, or one
    from another host (whose processes this one cannot see), is left alone.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    for stale in path.parent.glob(f".*{TMP_MARK}*"):
        if left_by_a_dead_writer(stale):
            stale.unlink(missing_ok=True)
    with stop_signals_deferred():
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # replaces a symlink itself, never writes through it
        except (OSError, RuntimeError) as err:
            cause = find_cause(err, OSError)  # torch's zip writer: `unexpected pos`
            if cause is None:
                raise
            raise CheckpointWriteFailed(
                f"cannot write {path} ({os_error_reason(cause)}); "
                "the previous file is intact: make room, then continue"
            ) from err
        finally:
            tmp.unlink(missing_ok=True)
