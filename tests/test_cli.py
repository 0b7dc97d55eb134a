"""`key=value` parsing: typed fields are checked, plain `str` fields are kept verbatim; how a
command ends on bad input or Ctrl-C."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib.machinery import ModuleSpec
from types import ModuleType

import pytest
from omegaconf import MISSING

from src.cli import parse_cli, usage
from src.errors import EXIT_SIGINT, EXIT_USER_ERROR, UserError, exit_on_user_error


@dataclass
class Schema:
    path: str = MISSING
    prompt: str = ""
    steps: int = 1
    top_p: float | None = None


@pytest.mark.parametrize("value", ["true", "007", "1e5", "a: b", "[x, y]", "${oc.env:HOME}", "x=y", ""])
def test_str_fields_keep_the_text_as_typed(value):
    assert parse_cli(Schema, ["path=p", f"prompt={value}"]).prompt == value


def test_typed_fields_are_converted_and_checked():
    cfg = parse_cli(Schema, ["path=p", "steps=3", "top_p=null"])
    assert (cfg.steps, cfg.top_p) == (3, None)
    with pytest.raises(UserError, match="could not be converted to Integer"):
        parse_cli(Schema, ["path=p", "steps=three"])
    with pytest.raises(UserError, match="path=... is required"):
        parse_cli(Schema, ["prompt=hi"])
    with pytest.raises(UserError, match="Key 'prompts' not in 'Schema'"):
        parse_cli(Schema, ["path=p", "prompts=hi"])


@pytest.mark.parametrize(
    ("spec", "argv0", "command"),
    [
        (ModuleSpec("src.generate", None), "/repo/src/generate.py", "python -m src.generate"),
        (None, "/venv/bin/smollm2-generate", "smollm2-generate"),  # a console script has no spec
    ],
)
def test_usage_names_the_command_that_was_run(monkeypatch, spec, argv0, command):
    main = ModuleType("__main__")
    main.__spec__ = spec
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", [argv0])
    assert usage(Schema).splitlines()[0] == f"usage: {command} key=value ..."


@pytest.mark.parametrize(
    ("raised", "code", "stderr"),
    [
        (KeyboardInterrupt(), EXIT_SIGINT, ""),
        (UserError("no such file"), EXIT_USER_ERROR, "error: no such file\n"),
    ],
)
def test_a_command_ends_on_ctrl_c_or_bad_input_with_the_shells_code_and_no_traceback(
    capsys, raised, code, stderr
):
    @exit_on_user_error
    def command() -> None:
        raise raised

    with pytest.raises(SystemExit) as exit_info:
        command()
    assert exit_info.value.code == code and capsys.readouterr().err == stderr
