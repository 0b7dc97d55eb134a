"""A run folder belongs to one run at a time.

A fresh run claims a folder no other run has (two launches in the same second, a job
array on a shared file system), and every run holds the folder's lock while it writes,
so a second live run on it (the same `hydra.run.dir`, or continuing a run still going)
stops with one line instead of interleaving checkpoints, metrics and samples. A launch writes
nothing there before it holds the lock: not even Hydra's record of it (`.hydra/`) or its log.

Hydra loads this module (the log file's handler) before the config is checked, so Lightning is
imported only where it is used, by then loaded already: a config error does not wait for it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
from datetime import datetime
from functools import cache
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

LOCK_NAME = ".lock"  # holds "<pid> <host>" of the run writing into the folder
# File systems where flock is not available (some network and FUSE mounts).
NO_LOCKING = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)
# Lock files held by this process. A forked child (a DataLoader worker) would share the lock
# and keep it after this process is killed, refusing the run's continuation: it closes them.
HELD: set[int] = set()
# What a run that started training leaves in its folder (`check_fresh_folder`).
RUN_RECORDS = ("checkpoints/last.ckpt", "plan.json", "csv/metrics.csv", "summary.json")
# The fresh run folder this process made or Hydra made for it, if any (`claim_fresh_folder`,
# `claim_named_folder`).
CLAIMED: list[Path] = []


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
            CLAIMED.append(Path(folder))
            return folder
        except FileExistsError:
            continue
    raise UserError(f"{runs}: 10000 runs started in this second; pick run_name=<name> or hydra.run.dir=<dir>")


def claim_named_folder(folder: str) -> str:
    """`folder` (`<runs>/<run_name>`), which Hydra creates where it does not exist yet: then it is
    this launch's to remove if it stays empty (`release_unused_claim`)."""
    if not os.path.exists(folder) and Path(folder) not in CLAIMED:
        CLAIMED.append(Path(folder))
    return folder


def check_run_name(name: str) -> None:
    """A name, not a path: `a/b` or `..` would put the run outside `logs/<task>/runs/`."""
    if name in (".", "..") or "/" in name or os.sep in name:
        raise UserError(f"run_name={name} is a path; give a plain folder name (no / or ..)")


def check_fresh_folder(folder: Path, run_name: str) -> None:
    """A fresh run named after a run that trained would replace its checkpoints, plan and
    summary and add to its metrics. A launch refused at startup leaves at most `.hydra/` and its
    log (src/training/run.py writes the records below once training starts): its name stays free."""
    held = [name for name in RUN_RECORDS if (folder / name).exists()]
    if not held:
        return
    last = folder / "checkpoints" / "last.ckpt"
    fix = f"continue it with ckpt_path={last}" if last.exists() else f"remove {folder}"
    raise UserError(f"run_name={run_name} already holds a run ({held[0]}); {fix}, or choose another run_name")


def release_unused_claim() -> None:
    """Remove the fresh folder this process made if nothing was written into it: a launch refused
    before its first file (a mistyped key, a bad value) leaves no empty run folder behind."""
    for folder in CLAIMED:
        try:
            folder.rmdir()  # only ever removes an empty folder
        except OSError:
            pass
    CLAIMED.clear()


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
        if not self.try_acquire():
            raise UserError(self.refusal())

    def try_acquire(self) -> bool:
        """Take the lock, or return False while a live run holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except OSError as err:
                os.close(fd)
                if err.errno not in NO_LOCKING:
                    raise
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(f"{self.path.parent}: no file locks here; a second run on it goes undetected")
                return True
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)  # a releasing owner removed the file between our open and flock: retry
        self.fd = fd
        HELD.add(fd)
        previous = read_owner(self.path)
        if previous is not None:
            from lightning.pytorch.utilities import rank_zero_info

            rank_zero_info(f"taking over {self.path}: its run (pid {previous[0]} on {previous[1]}) has ended")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return True

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


class HeldLogFile(logging.FileHandler):
    """Hydra's `<run>/<job>.log` (conf/hydra/default.yaml), opened by `start_writing` once the run
    holds its folder; records wait in memory until then, and a launch refused the folder of a
    live run drops them (the console has shown them) instead of adding them to that run's log."""

    def __init__(
        self, filename: str, mode: str = "a", encoding: str | None = None, errors: str | None = None
    ):
        super().__init__(filename, mode, encoding, delay=True, errors=errors)
        self.held: list[logging.LogRecord] | None = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        else:
            self.held.append(record)

    def start(self) -> None:
        with self.lock:
            if self.stream is None:
                self.stream = self._open()
            held, self.held = self.held or [], None
            for record in held:
                super().emit(record)


def hydra_subdir(ckpt_path: str | None) -> str:
    return f".hydra/continued_{datetime.now():%Y-%m-%d_%H-%M-%S}" if ckpt_path else ".hydra"


def launch_record(cfg: DictConfig, hydra_cfg: DictConfig) -> dict[str, str]:
    """The files Hydra would write into the run folder before the task starts (config.yaml,
    hydra.yaml, overrides.yaml), taken now and written by `start_writing` once the run holds its
    folder (conf/hydra/default.yaml). A continuation keeps the original .hydra/ and adds its own,
    whose config.yaml is `cfg` as replayed from the checkpoint (src/training/checked_config.py),
    not Hydra's composition of today's overrides alone. `hydra_cfg` is `HydraConfig.instance().cfg`
    (the `hydra:` node Hydra saves)."""
    subdir = hydra_subdir(cfg.ckpt_path)
    return {
        f"{subdir}/config.yaml": OmegaConf.to_yaml(cfg),
        f"{subdir}/hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
        f"{subdir}/overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task),
    }


def start_writing(folder: Path, record: dict[str, str]) -> None:
    """What a launch holds back until the run owns `folder`: `record` (relative path -> text:
    Hydra's `.hydra/*.yaml`, taken at the start) and the log file."""
    for name, text in record.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    for handler in logging.getLogger().handlers:
        if isinstance(handler, HeldLogFile):
            handler.start()


def takes_the_lock() -> bool:
    """Only global rank 0 locks: Lightning starts the other ranks by re-running the command
    line on the same folder (LOCAL_RANK set), and other nodes' launchers have NODE_RANK > 0."""
    from lightning.pytorch.utilities import rank_zero_only

    return rank_zero_only.rank == 0 and os.environ.get("NODE_RANK", "0") == "0"
