"""A run folder belongs to one run: fresh folders never collide, a live run's folder is refused
to a second run (which writes nothing there), and checkpoint temp files are removed only once
their writer is gone."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import EXIT_SIGTERM, UserError
from src.training import run_folder
from src.training.checkpoint import read_checkpoint
from src.training.checkpoint_io import AtomicCheckpointIO
from src.training.run_folder import LOCK_NAME, HeldLogFile, RunLock, claim_fresh_folder, start_writing
from tests.helpers import run_cli, run_plain
from tests.training import fast_overrides, run_training, write_text


@pytest.fixture
def text(tmp_path):
    return write_text(tmp_path / "input.txt")


def cli_args(tmp_path, text, *extra: str) -> list[str]:
    """A tiny run whose folder Hydra chooses (no paths.output_dir)."""
    return [a for a in fast_overrides(tmp_path, text, *extra) if not a.startswith("paths.output_dir=")]


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


class FrozenClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return datetime(2026, 1, 2, 3, 4, 5)


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "datetime", FrozenClock)
    claim = claim_fresh_folder.__wrapped__  # uncached: each call stands for another process
    runs = tmp_path / "logs" / "train" / "runs"
    folders = [claim(str(runs)) for _ in range(3)]
    names = ["2026-01-02_03-04-05", "2026-01-02_03-04-05_2", "2026-01-02_03-04-05_3"]
    assert folders == [str(runs / n) for n in names]
    assert sorted(p.name for p in runs.iterdir()) == names


@pytest.mark.slow
def test_two_launches_at_once_train_into_two_folders(tmp_path, text):
    """The default run name, two processes started together on one paths.root_dir."""
    command = [
        sys.executable,
        "-m",
        "src.train",
        *cli_args(tmp_path, text, "trainer.max_steps=2", "val_at_start=false"),
    ]
    procs = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], errors
    folders = sorted((tmp_path / "logs" / "train" / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == 2
        assert not (folder / LOCK_NAME).exists()  # released at exit


def files_in(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def as_a_live_run_left_it(folder: Path) -> dict[str, bytes]:
    """The folder with what a live run has written besides its lock (Hydra's record of its
    launch, its log), byte for byte."""
    (folder / ".hydra").mkdir()
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (folder / ".hydra" / name).write_text(f"# the live run's {name}\n")
    (folder / "train.log").write_text("[the live run's log]\n")
    return files_in(folder)


def launch_beside_a_live_run(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, bool]:
    """`python -m src.train *args` while a live run holds `folder`; and whether the folder's
    files stayed byte for byte as that run left them."""
    with RunLock(folder, continuing=False):
        before = as_a_live_run_left_it(folder)
        result = run_cli("src.train", *args)
        return result, files_in(folder) == before


def test_a_second_run_on_a_live_runs_folder_is_refused_in_one_line_and_writes_nothing_there(tmp_path, text):
    folder = tmp_path / "busy"
    args = cli_args(tmp_path, text, f"hydra.run.dir={folder}", "optim.lr=1e-2")
    result, untouched = launch_beside_a_live_run(folder, *args)
    assert result.returncode == 2, result.stderr[-3000:]
    host = socket.gethostname()
    assert result.stderr.splitlines()[-1] == (
        f"error: {folder} is in use by a live run (pid {os.getpid()} on {host}); "
        "pick another run_name or hydra.run.dir"
    )
    assert untouched


def test_a_plan_for_a_live_runs_folder_is_printed_and_writes_nothing_there(tmp_path, text):
    folder = tmp_path / "busy"
    result, untouched = launch_beside_a_live_run(
        folder, *cli_args(tmp_path, text, f"hydra.run.dir={folder}", "plan=true")
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tokens per step" in result.stderr and untouched


def test_a_continuation_refused_while_its_run_goes_on_writes_nothing_there(tmp_path, text):
    overrides = fast_overrides(tmp_path, text, "trainer.max_steps=1", "val_at_start=false")
    run_training(overrides)
    folder = tmp_path / "run"
    last = folder / "checkpoints" / "last.ckpt"
    result, untouched = launch_beside_a_live_run(
        folder, *overrides, "trainer.max_steps=2", f"ckpt_path={last}"
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1].endswith("continue once it has ended")
    assert untouched  # no .hydra/continued_<time>/ either


@pytest.mark.slow
def test_a_run_and_its_continuation_write_hydras_record_of_their_launch(tmp_path, text):
    """Written once the run holds its folder, as Hydra would have written it before."""
    run = tmp_path / "run"
    args = cli_args(tmp_path, text, "trainer.max_steps=1", "val_at_start=false")
    assert run_cli("src.train", *args, f"hydra.run.dir={run}").returncode == 0
    first = files_in(run / ".hydra")
    assert sorted(first) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert OmegaConf.load(run / ".hydra" / "overrides.yaml") == args
    assert OmegaConf.load(run / ".hydra" / "config.yaml").trainer.max_steps == 1
    assert OmegaConf.load(run / ".hydra" / "hydra.yaml").hydra.runtime.output_dir == str(run)
    assert (run / "train.log").is_file()

    again = [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=2"]
    assert run_cli("src.train", *again).returncode == 0
    (continued,) = (run / ".hydra").glob("continued_*")
    assert sorted(files_in(continued)) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert OmegaConf.load(continued / "overrides.yaml") == again
    replayed = OmegaConf.load(continued / "config.yaml")  # the config the continuation ran with
    assert (
        replayed.trainer.max_steps == 2
        and replayed.data == OmegaConf.load(run / ".hydra" / "config.yaml").data
    )
    assert {k: v for k, v in files_in(run / ".hydra").items() if "/" not in k} == first


def test_a_runs_log_is_held_until_the_run_holds_its_folder(tmp_path):
    handler = HeldLogFile(str(tmp_path / "train.log"))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        logging.getLogger("tests.held").warning("before the lock")
        assert not (tmp_path / "train.log").exists()
        start_writing(tmp_path, {".hydra/config.yaml": "seed: 1\n"})
        logging.getLogger("tests.held").warning("after it")
    finally:
        root.removeHandler(handler)
        handler.close()
    assert (tmp_path / "train.log").read_text() == "before the lock\nafter it\n"
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "seed: 1\n"


def test_a_refused_runs_held_log_is_dropped(tmp_path):
    handler = HeldLogFile(str(tmp_path / "train.log"))
    handler.handle(logging.makeLogRecord({"msg": "refused"}))
    handler.close()
    assert list(tmp_path.iterdir()) == []


def test_continuing_a_run_that_is_still_going_is_refused(tmp_path, text):
    overrides = fast_overrides(tmp_path, text, "trainer.max_steps=1", "val_at_start=false")
    run_training(overrides)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with (
        RunLock(tmp_path / "run", continuing=False),
        pytest.raises(UserError, match="continue once it has ended"),
    ):
        run_training([*overrides, "trainer.max_steps=2", f"ckpt_path={last}"])
    assert last.read_bytes() == before
    run_training([*overrides, "trainer.max_steps=2", f"ckpt_path={last}"])  # once it has ended
    assert read_checkpoint(last)["global_step"] == 2


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_message(tmp_path, text, caplog):
    folder = tmp_path / "run"
    folder.mkdir()
    pid = dead_pid()
    (folder / LOCK_NAME).write_text(f"{pid} {socket.gethostname()}\n")
    with caplog.at_level(logging.INFO):
        run_training(fast_overrides(tmp_path, text, "trainer.max_steps=1", "val_at_start=false"))
    assert (
        f"taking over {folder / LOCK_NAME}: its run (pid {pid} on {socket.gethostname()}) has ended"
        in caplog.text
    )
    assert read_checkpoint(folder / "checkpoints" / "last.ckpt")["global_step"] == 1
    assert not (folder / LOCK_NAME).exists()


HOLD_AND_FORK = """
import os, sys, time
from pathlib import Path
from src.training.run_folder import RunLock
RunLock(Path(sys.argv[1]), continuing=False).acquire()
if os.fork() == 0:  # a DataLoader worker, say, that outlives a kill -9 of its parent by a while
    print(os.getpid(), flush=True)  # after the fork's hooks have run in this child
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


def test_a_killed_runs_forked_children_do_not_keep_its_lock(tmp_path):
    command = [sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)]
    owner = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline())
    try:
        with pytest.raises(UserError, match="in use by a live run"):
            RunLock(tmp_path, continuing=True).acquire()
        owner.kill()
        owner.wait()
        lock = RunLock(tmp_path, continuing=True)
        lock.acquire()  # while the forked child still sleeps
        lock.release()
    finally:
        owner.kill()
        owner.wait()
        os.kill(child, signal.SIGKILL)


def test_only_temp_files_of_writers_that_are_gone_are_removed(tmp_path):
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = [f".last.ckpt.tmp-{host}-{live.pid}", f".last.ckpt.tmp-other-host-{dead_pid()}"]
        removed = [f".last.ckpt.tmp-{host}-{dead_pid()}", f".step_1.ckpt.tmp-{dead_pid()}"]  # pid only: older
        for name in kept + removed:
            (tmp_path / name).write_bytes(b"half a checkpoint")
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(3)}, tmp_path / "last.ckpt")
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, "last.ckpt"])


def test_sigterm_before_the_run_starts_exits_143_and_leaves_no_empty_run_folder(tmp_path):
    """A scheduler's SIGTERM while the config is checked (before fit's own handling)."""
    result, _ = run_plain("tests.sigterm_in_config_checks", f"paths.root_dir={tmp_path}", "logger=csv")
    runs = tmp_path / "logs" / "train" / "runs"
    assert result.returncode == EXIT_SIGTERM, result.stderr
    assert runs.is_dir() and not list(runs.iterdir())  # the folder it had claimed is gone


def test_a_fresh_run_is_refused_the_folder_of_a_run_that_trained_and_writes_nothing_there(tmp_path, text):
    done = tmp_path / "logs" / "train" / "runs" / "done"
    (done / "checkpoints").mkdir(parents=True)
    (done / "checkpoints" / "last.ckpt").write_bytes(b"the finished run's weights")
    (done / "summary.json").write_text("{}\n")
    before = files_in(done)
    result = run_cli("src.train", *cli_args(tmp_path, text, "run_name=done", "trainer.max_steps=1"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines()[-1] == (
        "error: run_name=done already holds a run (checkpoints/last.ckpt); continue it with "
        f"ckpt_path={done}/checkpoints/last.ckpt, or choose another run_name"
    )
    assert files_in(done) == before


def test_a_run_name_whose_launch_was_refused_at_startup_stays_free(tmp_path, text):
    """Such a launch leaves at most Hydra's record and its log (a text too short, found once the
    folder is held)."""
    folder = tmp_path / "logs" / "train" / "runs" / "retry"
    folder.mkdir(parents=True)
    as_a_live_run_left_it(folder)
    result = run_cli("src.train", *cli_args(tmp_path, text, "run_name=retry", "plan=true"))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".."])
def test_a_run_name_that_is_a_path_is_refused_and_makes_no_folder(tmp_path, text, name):
    result = run_cli("src.train", *cli_args(tmp_path, text, f"run_name={name}"))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        f"error: run_name={name} is a path; give a plain folder name (no / or ..)"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input.txt"]
