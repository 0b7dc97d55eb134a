"""`python -m src.app`: one-line start-up errors (exit 2); bad page input is a message, not a stuck status."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest

from src.app import main, reply
from src.models import SmolLM2, SmolLM2Config
from src.serving.inference import ModelSource, TextGenerator
from tests.conftest import REPO_ROOT
from tests.helpers import run_cli, start_app, tiny_checkpoint, write_checkpoint


def test_missing_checkpoint_is_one_line_and_exit_2(tmp_path):
    result = run_cli("src.app", f"ckpt_path={tmp_path / 'missing.ckpt'}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "checkpoint not found" in result.stderr


def test_ctrl_c_stops_the_app_with_the_shells_130_and_no_traceback(tmp_path):
    write_checkpoint(SmolLM2(SmolLM2Config.from_preset("tiny")), tmp_path / "tiny.ckpt")
    log = tmp_path / "app.log"
    process, port = start_app(tmp_path / "tiny.ckpt", log)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=20) == 130, log.read_text()
    assert "Traceback" not in log.read_text()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_busy_port_is_one_line_and_exit_2(tmp_path):
    write_checkpoint(SmolLM2(SmolLM2Config.from_preset("tiny")), tmp_path / "tiny.ckpt")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run_cli("src.app", f"ckpt_path={tmp_path / 'tiny.ckpt'}", f"port={taken.getsockname()[1]}")
    assert result.returncode == 2 and result.stderr.count("\n") == 1  # before the model loads
    assert result.stderr.startswith("error: cannot serve on 127.0.0.1:")


def test_port_0_serves_on_a_free_port_it_prints(tmp_path):
    write_checkpoint(SmolLM2(SmolLM2Config.from_preset("tiny")), tmp_path / "tiny.ckpt")
    log = tmp_path / "app.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "src.app", f"ckpt_path={tmp_path / 'tiny.ckpt'}", "port=0"],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not (served := re.search(r"serving on http://127\.0\.0\.1:(\d+)", log.read_text())):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        port = int(served[1])
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert port != 0 and "Traceback" not in log.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def generator(module_tmp_path) -> TextGenerator:
    path = module_tmp_path / "tiny.ckpt"
    tiny_checkpoint(path)
    return TextGenerator.load(ModelSource(ckpt_path=str(path)))


SETTINGS = {
    "chat": False,
    "greedy": False,
    "temperature": 0.8,
    "max_new_tokens": 5,
    "top_k": 50,
    "top_p": 1.0,
    "seed": 1,
}


def statuses(generator: TextGenerator, prompt: str | None, **changes) -> list[tuple[str, str]]:
    """What the page shows, step by step, for `prompt` and the default settings with `changes`."""
    return list(reply(generator, prompt, *{**SETTINGS, **changes}.values()))


def test_a_good_prompt_streams_and_ends_on_the_speed_line(generator):
    shown = statuses(generator, "Once upon a time")
    assert shown[0] == ("", "generating...") and shown[-1][1].endswith("tokens/s")


def test_one_new_token_is_counted_as_1_token(generator):
    assert statuses(generator, "Once upon a time", max_new_tokens=1)[-1][1].startswith("1 token in ")


def test_no_prompt_at_all_is_the_empty_prompt(generator):
    assert statuses(generator, None) == statuses(generator, "")
    assert statuses(generator, None)[-1][1].startswith("**Cannot generate:** the prompt is empty")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": math.nan}, "temperature is nan; enter a finite number"),
        ({"max_new_tokens": math.nan}, "max new tokens is nan"),
        ({"max_new_tokens": math.inf}, "max new tokens is inf"),
        ({"top_k": None}, "top-k is None"),
        ({"top_p": math.nan}, "top-p is nan"),
        ({"seed": math.nan}, "seed is nan"),
        ({"seed": 2.0**64}, "seed=18446744073709551616: use an integer in [0, 2**64)"),
        ({"seed": -1}, "seed=-1"),
        ({"temperature": 1e-45}, "temperature=1e-45: use 0 for greedy"),
        ({"top_k": 0.5}, "top-k is 0.5; enter a whole number"),
        ({"max_new_tokens": 0.5}, "max new tokens is 0.5; enter a whole number"),
        ({"seed": 3.7}, "seed is 3.7; enter a whole number"),
        ({"top_p": 1.5}, "top_p=1.5: use a value in (0, 1], or null for no nucleus filter"),
        ({"chat": True}, "chat mode needs a chat template, and this tokenizer has none; pass tokenizer="),
    ],
)
def test_bad_settings_end_on_a_message_not_an_exception(generator, changes, message):
    [(output, status)] = statuses(generator, "Hello", **changes)
    assert output == "" and status.startswith(f"**Cannot generate:** {message}"), status


def test_a_huge_prompt_is_refused_before_tokenizing(generator):
    """30 MB, as one request once sent: refused by its length, allocating nothing like its size."""
    prompt = "word " * 6_000_000
    tracemalloc.start()
    shown = statuses(generator, prompt)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(shown) == 1 and f"limit of {generator.max_prompt_chars:,}" in shown[0][1]
    assert peak < 1_000_000


def test_a_failure_inside_generation_ends_on_a_message(generator, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("probability tensor contains either inf, nan or element < 0")

    monkeypatch.setattr(generator.model.embed, "forward", broken)
    shown = statuses(generator, "Hello")
    assert shown[-1][1] == "**Generation failed:** probability tensor contains either inf, nan or element < 0"


def test_a_port_out_of_range_is_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ckpt_path=any.ckpt", "port=-1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: port=-1: use a TCP port in 0..65535 (0 picks a free one)\n"
