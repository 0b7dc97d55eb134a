"""Installing: a missing extra is one line with its pip command; a wheel install runs from any folder."""

from __future__ import annotations

import os
import shutil
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


@pytest.mark.slow
def test_a_non_editable_install_trains_from_another_folder(tmp_path):
    """The wheel carries the configs and the tokenizer; its console scripts name themselves."""
    source = tmp_path / "source"  # a clean copy: a stale build/ in the checkout must not reach the wheel
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source)
    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run([*install, "--target", str(site), str(source)], check=True, capture_output=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}

    def run(*command: str, **more_env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(
            command, cwd=elsewhere, env={**env, **more_env}, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stderr
        return result

    imported = run(sys.executable, "-c", "import src; print(src.__file__)").stdout.strip()
    assert imported == str(site / "src" / "__init__.py")
    text = write_text(tmp_path / "input.txt")
    smoke = ["experiment=smoke", f"data.path={text}", "data.seq_len=32", "trainer.max_steps=2"]
    smoke.append("schedule.warmup_steps=1")
    for name, command in [
        ("module", [sys.executable, "-m", "src.train"]),
        ("script", [site / "bin" / "smollm2-train"]),
    ]:
        run(*map(str, command), *smoke, f"hydra.run.dir={elsewhere / name}")
        assert (elsewhere / name / "checkpoints" / "last.ckpt").is_file()
    usage = run(str(site / "bin" / "smollm2-plot"), "--help").stdout
    assert usage.startswith("usage: smollm2-plot key=value")
    train = str(site / "bin" / "smollm2-train")
    completion = run(train, "-sc", "install=bash").stdout
    assert "complete -o nospace -o default -F hydra_bash_completion smollm2-train" in completion
    line = "smollm2-train model="  # what bash hands to Hydra on <TAB>
    choices = run(train, "-sc", "query=bash", COMP_LINE=line, COMP_POINT=str(len(line))).stdout.split()
    assert "model=tiny" in choices and "model=smollm2_135m" in choices
