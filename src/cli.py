"""`key=value` command lines for the small verbs (generate, export, app, plot).

Training composes its config with Hydra; the small verbs take a typed dataclass and
OmegaConf's dotlist parser, so a typo or a wrong type is a one-line error, not a crash.
A field annotated plain `str` (a prompt, a path) takes its value verbatim: the parser's
YAML typing would turn prompt=true into "True", prompt=007 into "7" and fail on "a: b".
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from src.errors import UserError

T = TypeVar("T")


def command_name() -> str:
    """The command as the user typed it: `python -m src.generate`, or a console script's name
    (`smollm2-generate`), whose `__main__` is a plain script without a module spec."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return f"python -m {spec.name}" if spec is not None else Path(sys.argv[0]).name


def usage(schema: type) -> str:
    lines = [f"usage: {command_name()} key=value ...", ""]
    for field in dataclasses.fields(schema):
        default = field.default if field.default is not dataclasses.MISSING else "(required)"
        lines.append(f"  {field.name}={default}")
    return "\n".join(lines)


def parse_cli(schema: type[T], argv: list[str] | None = None, positional: str | None = None) -> T:
    """Parse `key=value` arguments into `schema`; `--help` prints the keys and defaults.
    With `positional`, a bare argument is that field's value (`python -m src.plot <run>`)."""
    argv = sys.argv[1:] if argv is None else argv
    if positional is not None:
        argv = [arg if "=" in arg or arg.startswith("-") else f"{positional}={arg}" for arg in argv]
    if any(arg in ("-h", "--help") for arg in argv):
        print(usage(schema))
        sys.exit(0)
    bad = [arg for arg in argv if "=" not in arg]
    if bad:
        raise UserError(f"arguments must look like key=value, got {bad[0]!r} (see --help)")
    text_fields = {field.name for field in dataclasses.fields(schema) if field.type in ("str", str)}
    verbatim = dict(arg.split("=", 1) for arg in argv if arg.split("=", 1)[0] in text_fields)
    typed = [arg for arg in argv if arg.split("=", 1)[0] not in text_fields]
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(typed))
        for name in verbatim:
            merged[name] = ""  # placeholder, so `${` in the real value is never interpolated
        for field in dataclasses.fields(schema):
            if OmegaConf.is_missing(merged, field.name):
                raise UserError(f"{field.name}=... is required (see --help)")
        return dataclasses.replace(OmegaConf.to_object(merged), **verbatim)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        raise UserError(str(err).splitlines()[0] + " (see --help)") from None
