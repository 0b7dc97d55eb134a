"""Files replaced whole: a reader sees the old content or the new, never half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from src.errors import UserError

TMP_MARK = ".tmp-"  # a file being written: .<name>.tmp-<host>-<pid>


def temp_path(path: Path) -> Path:
    """Where this process writes `path` before renaming it into place: hidden, in the same folder
    (a rename never crosses file systems), named by host and pid so that writers sharing a folder
    (ranks, other machines on a network file system) never write into one file."""
    return path.with_name(f".{path.name}{TMP_MARK}{socket.gethostname()}-{os.getpid()}")


@contextlib.contextmanager
def atomic_write(path: Path, mode: Literal["w", "wb"] = "w", **open_args: Any) -> Iterator[IO[Any]]:
    """A file to write `path`'s new content into; it replaces `path` when the block ends.

    Any exception in the block or in the rename, Ctrl-C included, removes the temporary file
    and leaves `path` as it was. Not fsynced, so a power cut may lose the new content: the
    files written this way can be written again, unlike a checkpoint (training/checkpoint.py).
    """
    tmp = temp_path(path)
    try:
        with open(tmp, mode, **open_args) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def probe_writable(folder: Path) -> None:
    """Raise the OSError that writing a file into `folder` would meet, without making the folder
    or leaving a file: a folder not made yet is judged by its nearest existing parent."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
    with tempfile.TemporaryFile(dir=existing):
        pass


def check_output_file(path: Path, key: str) -> None:
    """Fail before the work, not after it, when the file a command writes at its end (`key=path`)
    cannot be written."""
    if path.is_dir():
        raise UserError(f"{key}={path} is a folder; pass a file path")
    try:
        probe_writable(path.parent)
    except OSError as err:
        raise UserError(f"cannot write {key}={path} ({err.strerror}); pass a writable {key}") from None
