"""Installing: a missing extra is one line with its pip command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.training import fast_overrides, write_text

# `python -m <module> args...` with some packages made unimportable, as if they were not installed.
RUN_WITHOUT = """\
import runpy, sys
for name in sys.argv.pop(1).split(","):
    sys.modules[name] = None  # `import name` now raises ImportError
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""


def run_without(blocked: str, module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, blocked, module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("blocked", "module", "extra"),
    [("gradio", "src.app", "app"), ("matplotlib", "src.plot", "plot")],
)
def test_a_command_without_its_extra_says_which_to_install(tmp_path, blocked, module, extra):
    arg = f"ckpt_path={tmp_path / 'x.ckpt'}" if module == "src.app" else f"run_dir={tmp_path}"
    result = run_without(blocked, module, arg)
    assert result.returncode == 2
    assert result.stderr == (
        f'error: python -m {module} needs {blocked}: pip install "smollm2-lightning[{extra}]"\n'
    )


def test_tensorboard_logger_without_its_extra_fails_before_training(tmp_path):
    text = write_text(tmp_path / "input.txt")
    overrides = fast_overrides(tmp_path, text, "logger=tensorboard")
    result = run_without("tensorboardX,tensorboard", "src.train", *overrides)
    assert result.returncode == 2
    assert result.stderr == (
        'error: logger=tensorboard needs tensorboardX: pip install "smollm2-lightning[tensorboard]"\n'
    )
    assert not (tmp_path / "run" / "checkpoints").exists()
