"""A run folder belongs to one run at a time.

A fresh run claims a folder no other run has (two launches in the same second, a job
array on a shared file system), and every run holds the folder's lock while it writes,
so a second live run on it (the same `hydra.run.dir`, or continuing a run still going)
stops with one line instead of interleaving checkpoints, metrics and samples.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from datetime import datetime
from functools import cache
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from src.errors import UserError

LOCK_NAME = ".lock"  # holds "<pid> <host>" of the run writing into the folder
# File systems where flock is not available (some network and FUSE mounts).
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
# Lock files held by this process. A forked child (a DataLoader worker) would share the lock
# and keep it after this process is killed, refusing the run's continuation: it closes them.
HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in HELD:
        os.close(fd)
    HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)


@cache  # Hydra may resolve the run folder more than once; the claim is made once per process
def claim_fresh_folder(runs: str) -> str:
    """`<runs>/<date>_<time>`, or `..._2`, `..._3` when another run created that first.

    `mkdir` is atomic, also on network file systems, so no two processes get the same folder.
    """
    Path(runs).mkdir(parents=True, exist_ok=True)
    base = os.path.join(runs, f"{datetime.now():%Y-%m-%d_%H-%M-%S}")
    for n in range(1, 10_000):
        folder = base if n == 1 else f"{base}_{n}"
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            continue
    raise UserError(f"{runs}: 10000 runs started in this second; pick run_name=<name> or hydra.run.dir=<dir>")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def read_owner(lock: Path) -> tuple[int, str] | None:
    """The `(pid, host)` a lock file names, or None for an empty or foreign file."""
    try:
        pid, host = lock.read_text().split()
        return int(pid), host
    except (OSError, ValueError):
        return None


class RunLock:
    """An exclusive `flock` on `<run>/.lock`, held until `release()` or this process ends.

    The kernel drops the lock when its holder dies, however it dies, so a lock left by a killed
    run is free; its file still names the old owner, which is taken over with a message.
    """

    def __init__(self, folder: Path, continuing: bool) -> None:
        self.path = folder / LOCK_NAME
        self.continuing = continuing
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise UserError(self.refusal()) from None
            except OSError as err:
                os.close(fd)
                if err.errno not in NO_LOCKING:
                    raise
                rank_zero_warn(f"{self.path.parent}: no file locks here; a second run on it goes undetected")
                return
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # a releasing owner removed the file between our open and flock: retry
        self.fd = fd
        HELD.add(fd)
        previous = read_owner(self.path)
        if previous is not None:
            rank_zero_info(f"taking over {self.path}: its run (pid {previous[0]} on {previous[1]}) has ended")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())

    def refusal(self) -> str:
        owner = read_owner(self.path)
        who = f"pid {owner[0]} on {owner[1]}" if owner else "another process"
        fix = "continue once it has ended" if self.continuing else "pick another run_name or hydra.run.dir"
        return f"{self.path.parent} is in use by a live run ({who}); {fix}"

    def release(self) -> None:
        """Remove the file, then unlock: a run that opens the removed file retries on the new one."""
        if self.fd is None:
            return
        self.path.unlink(missing_ok=True)
        HELD.discard(self.fd)
        os.close(self.fd)
        self.fd = None


def takes_the_lock() -> bool:
    """Only global rank 0 locks: Lightning starts the other ranks by re-running the command
    line on the same folder (LOCAL_RANK set), and other nodes' launchers have NODE_RANK > 0."""
    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
