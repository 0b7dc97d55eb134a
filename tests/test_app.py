"""`python -m src.app` start-up failures: a one-line error and exit 2 instead of a traceback."""

from __future__ import annotations

import socket

from src.models import SmolLM2, SmolLM2Config
from tests.helpers import run_cli, write_checkpoint


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    result = run_cli("src.app", f"ckpt_path={tmp_path / 'missing.ckpt'}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "checkpoint not found" in result.stderr


def test_busy_port_is_one_line_and_exit_2(tmp_path):
    write_checkpoint(SmolLM2(SmolLM2Config.from_preset("tiny")), tmp_path / "tiny.ckpt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("src.app", f"ckpt_path={tmp_path / 'tiny.ckpt'}", f"port={taken.getsockname()[1]}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error: cannot serve on 127.0.0.1:")
