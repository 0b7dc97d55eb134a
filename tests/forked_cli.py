"""`python -m module args...` for the tests, forked from a process that imported the heavy libraries.

Every command of the project imports torch and Lightning first, which on a small CPU takes
longer than most of the tests' runs take to train (README: Install anywhere). So each test
worker starts one server process that imports them (and Hydra and W&B), and never computes:
a process that ran OpenMP work cannot fork a working child. Each command is a fork of it that
runs `module` as `__main__` with `args`, as `python -m` does, exits with the status the
interpreter would give and leaves its output in files. A command whose environment differs
from the server's (libraries read some variables at import) gets a new server. Tests of the
launch itself (the installed package, a missing dependency, signals sent from outside) start
real processes.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

PRELOAD = ("torch", "lightning.pytorch", "hydra", "wandb")
PER_TEST = "PYTEST_CURRENT_TEST"  # pytest sets it for each test: no library reads it at import


def same_environment(a: dict[str, str], b: dict[str, str]) -> bool:
    return {k: v for k, v in a.items() if k != PER_TEST} == {k: v for k, v in b.items() if k != PER_TEST}


def exit_code(err: SystemExit) -> int:
    """The interpreter's exit status for `sys.exit(code)`: a non-integer is printed, status 1."""
    if err.code is None:
        return 0
    if isinstance(err.code, int):
        return err.code
    print(err.code, file=sys.stderr)
    return 1


def run_command(request: dict) -> None:
    """In the forked child: run the module as `python -m` would, then leave without returning."""
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in (
        (0, os.devnull, os.O_RDONLY),
        (1, request["stdout"], os.O_WRONLY | os.O_TRUNC),
        (2, request["stderr"], os.O_WRONLY | os.O_TRUNC),
    ):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    sys.argv = [request["module"], *request["args"]]
    code, killed_by = 0, None
    try:
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as err:
        code = exit_code(err)
    except KeyboardInterrupt:  # the interpreter prints it and dies by SIGINT
        traceback.print_exc()
        killed_by = signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    threading._shutdown()  # as the interpreter: non-daemon threads end first, then atexit
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if killed_by is not None:
        signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)
    os._exit(code)


def serve(requests: int, replies: int) -> None:
    """The server loop: one command at a time, its pid sent when it starts and its status when it ends."""
    for module in PRELOAD:
        __import__(module)
    with os.fdopen(requests) as inbox, os.fdopen(replies, "w") as outbox:
        for line in inbox:
            request = json.loads(line)
            pid = os.fork()
            if pid == 0:
                try:
                    os.close(requests)
                    os.close(replies)
                    run_command(request)
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(1)  # run_command leaves by os._exit: this is for an error of its own
            outbox.write(f"{pid}\n")
            outbox.flush()
            _, status = os.waitpid(pid, 0)
            outbox.write(f"{os.waitstatus_to_exitcode(status)}\n")
            outbox.flush()


class Server:
    """The client side: one server per test worker, started on first use."""

    def __init__(self) -> None:
        self.env = dict(os.environ)
        to_server, self.requests = os.pipe()
        self.replies, from_server = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.forked_cli", str(to_server), str(from_server)],
            cwd=Path(__file__).resolve().parents[1],
            pass_fds=(to_server, from_server),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_server)
        os.close(from_server)
        atexit.register(self.close)

    def serves(self) -> bool:
        return self.process.poll() is None and same_environment(dict(os.environ), self.env)

    def run(self, module: str, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            out.touch()
            err.touch()
            request = dict(
                module=module, args=args, cwd=str(cwd), env=dict(os.environ), stdout=str(out), stderr=str(err)
            )
            os.write(self.requests, (json.dumps(request) + "\n").encode())
            pid = int(self.reply(timeout=None))
            code = self.reply(timeout)
            timed_out = code is None
            if timed_out:
                os.kill(pid, signal.SIGKILL)
                code = self.reply(timeout=None)
            result = subprocess.CompletedProcess(
                [sys.executable, "-m", module, *args], int(code), out.read_text(), err.read_text()
            )
        if timed_out:
            raise subprocess.TimeoutExpired(result.args, timeout, result.stdout, result.stderr)
        return result

    def reply(self, timeout: float | None) -> str | None:
        """The server's next line, read byte by byte (no buffer that `select` cannot see), or None
        once `timeout` seconds pass without it."""
        line = b""
        while not line.endswith(b"\n"):
            ready, _, _ = select.select([self.replies], [], [], timeout)
            if not ready:
                return None
            byte = os.read(self.replies, 1)
            if not byte:
                raise RuntimeError("the forked-CLI server ended")
            line += byte
        return line.decode()

    def close(self) -> None:
        """Ends the server (its loop ends at the end of its input) and closes both pipes; once."""
        atexit.unregister(self.close)
        os.close(self.requests)
        os.close(self.replies)
        self.process.wait(timeout=30)


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
