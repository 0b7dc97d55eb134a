"""Where the run writes: every folder and file is checked before training, and a disk that
fills up mid-run ends with one line, the last good checkpoint intact and the way to continue."""

from __future__ import annotations

import os

import pytest

from src.errors import EXIT_USER_ERROR, UserError, find_user_error
from src.training.checkpoint import read_checkpoint
from tests.helpers import run_cli
from tests.training import fast_overrides, run_training, write_text


def refusal(tmp_path, *extra: str) -> str:
    """The one-line error a run with `extra` stops with, having written no checkpoint or metric."""
    text = write_text(tmp_path / "input.txt")
    with pytest.raises(Exception) as failure:  # Hydra's instantiate may wrap it
        run_training(fast_overrides(tmp_path, text, "trainer.max_steps=2", *extra))
    error = find_user_error(failure.value)
    assert isinstance(error, UserError), failure.value
    written = [p.name for p in (tmp_path / "run").rglob("*") if p.is_file() and p.suffix in (".ckpt", ".csv")]
    assert not written
    return str(error)


def test_a_folder_in_the_place_of_last_ckpt_is_refused_before_training(tmp_path):
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.mkdir(parents=True)
    assert refusal(tmp_path).startswith(f"{last} is a folder, where the run writes a file")


def test_a_folder_in_the_place_of_the_samples_file_is_refused_before_training(tmp_path):
    samples = tmp_path / "run" / "samples.jsonl"
    samples.mkdir(parents=True)
    assert refusal(tmp_path).startswith(f"{samples} is a folder, where the run writes a file")


def test_a_file_in_the_place_of_the_csv_folder_is_refused_before_training(tmp_path):
    csv = tmp_path / "run" / "csv"
    csv.parent.mkdir()
    csv.write_text("")
    assert refusal(tmp_path).startswith(f"cannot write to the folder {csv} (Not a directory)")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_checkpoints_folder_is_refused_before_training(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    folder.chmod(0o555)
    try:
        assert refusal(tmp_path).startswith(f"cannot write to the folder {folder} (Permission denied)")
    finally:
        folder.chmod(0o755)


def full_disk_run(tmp_path, fault: str, *extra: str) -> tuple[str, str]:
    """A 6-step run whose disk fills at step 4 (`fault`, from tests.faults): its stderr and
    its one `error:` line, after checking that it ended with exit 2 and no traceback."""
    args = fast_overrides(
        tmp_path,
        write_text(tmp_path / "input.txt"),
        "trainer.max_steps=6",
        "kernels=[]",
        "checkpoint_every=2",
        f"+callbacks.test._target_=tests.faults.{fault}",
        "+callbacks.test.step=3",
        *extra,
    )
    proc = run_cli("src.train", *args)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1
    return proc.stderr, errors[0]


@pytest.mark.slow
def test_a_full_disk_ends_with_one_line_and_the_last_good_checkpoint(tmp_path):
    """The disk fills up after step 2's save; step 4's save fails and the run says where to resume."""
    stderr, error = full_disk_run(tmp_path, "DiskFullFrom")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert error.startswith(f"error: cannot write {last} (ENOSPC: No space left on device)")  # step 4's
    assert f"{last} holds step 2; continue with ckpt_path={last}" in stderr
    assert read_checkpoint(last)["global_step"] == 2
    assert not list(last.parent.glob(".*.tmp-*"))


@pytest.mark.slow
def test_a_full_disk_under_the_samples_file_is_one_line_naming_it(tmp_path):
    """Not only checkpoints: a metric or sample write that finds the disk full ends alike."""
    stderr, error = full_disk_run(tmp_path, "SamplesDiskFullFrom", "callbacks.text_samples.every_n_steps=2")
    samples, last = tmp_path / "run" / "samples.jsonl", tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert error.startswith(f"error: cannot write {samples} (ENOSPC: No space left on device)")
    assert f"{last} holds step 4; continue with ckpt_path={last}" in stderr
    assert read_checkpoint(last)["global_step"] == 4
