"""atomic_write: new content replaces the file whole; a failure leaves the old file and no temporary."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from src.files import atomic_write, temp_path


def test_the_new_content_replaces_the_file_and_nothing_is_left_beside_it(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old\n")
    with atomic_write(path) as f:
        f.write("new\n")
        assert path.read_text() == "old\n"  # readers see the old file until the block ends
    assert path.read_text() == "new\n"
    with atomic_write(tmp_path / "tokens.npy", "wb") as f:
        f.write(b"\x93NUMPY")
    assert (tmp_path / "tokens.npy").read_bytes() == b"\x93NUMPY"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json", "tokens.npy"]


def test_the_temporary_is_hidden_beside_the_file_and_names_it_the_host_and_the_pid(tmp_path):
    path = tmp_path / "summary.json"
    with atomic_write(path) as f:
        assert f.name == str(temp_path(path))
        assert [p.name for p in tmp_path.iterdir()] == [temp_path(path).name]
    assert temp_path(path).name == f".summary.json.tmp-{socket.gethostname()}-{os.getpid()}"


def full_disk() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("error", [full_disk(), KeyboardInterrupt()], ids=["ENOSPC", "Ctrl-C"])
@pytest.mark.parametrize("existed", [True, False], ids=["existing", "new"])
def test_a_failure_mid_write_leaves_the_old_file_and_no_temporary(tmp_path, error, existed):
    path = tmp_path / "summary.json"
    if existed:
        path.write_text("old\n")
    with pytest.raises(type(error)), atomic_write(path) as f:
        f.write("half of the new")
        f.flush()
        raise error
    assert [p.name for p in tmp_path.iterdir()] == (["summary.json"] if existed else [])
    assert not existed or path.read_text() == "old\n"


def test_a_failed_rename_removes_the_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.mkdir()  # os.replace cannot put a file over a folder
    with pytest.raises(IsADirectoryError), atomic_write(path) as f:
        f.write("new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"] and path.is_dir()
