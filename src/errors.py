"""The one error type for bad input a user can fix.

Entry points catch it, print its message on one line and exit non-zero, so users see
what is wrong and how to fix it instead of a traceback.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
from collections.abc import Callable
from typing import TypeVar

F = TypeVar("F", bound=Callable)
E = TypeVar("E", bound=BaseException)


class UserError(ValueError):
    """Bad input: a file, a config value or a checkpoint the user can fix."""


EXIT_USER_ERROR = 2
EXIT_SIGINT, EXIT_SIGPIPE, EXIT_SIGTERM = 130, 141, 143  # the shell's 128 + signal number


def first_line(err: BaseException) -> str:
    """A library error's first line (or its type), to quote inside a one-line UserError."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def os_error_reason(err: OSError) -> str:
    """An OSError as its errno name and message (`ENOSPC: No space left on device`)."""
    name = errno.errorcode.get(err.errno, err.errno) if err.errno is not None else type(err).__name__
    return f"{name}: {err.strerror or first_line(err)}"


def find_cause(err: BaseException | None, kind: type[E]) -> E | None:
    """The `kind` exception behind `err`, also when a library wrapped it or raised another
    while handling it (Hydra's instantiate; torch's zip writer after a failed write)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, kind):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def find_user_error(err: BaseException | None) -> UserError | None:
    return find_cause(err, UserError)


def user_message(err: UserError) -> str:
    """The error's one line; a UserError that torch's DataLoader re-raised from a worker
    carries the worker's traceback, whose last line ends with the original message."""
    text = str(err)
    if text.startswith(f"Caught {UserError.__name__} "):
        return text.strip().splitlines()[-1].split(f"{UserError.__name__}: ", 1)[-1]
    return text


def exit_on_user_error(main: F) -> F:
    """Decorate an entry point so a UserError ends it with `error: <message>` and exit code 2,
    a closed stdout (`| head`) with the shell's 141 and Ctrl-C with its 130, without a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(EXIT_SIGINT)
        except BrokenPipeError:
            # Python flushes stdout again at exit, which would fail and print; write to nowhere instead.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_SIGPIPE)
        except Exception as err:
            cause = find_user_error(err)
            if cause is None:
                raise
            print(f"error: {user_message(cause)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper  # type: ignore[return-value]
