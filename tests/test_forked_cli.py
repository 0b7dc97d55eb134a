"""A command forked from tests/forked_cli.py's server ends as `python -m` would: same exit status,
same output, the environment of the test."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.forked_cli import Server


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.close()


@pytest.mark.parametrize("how", ["return", "0", "3", "message", "raise", "interrupt", "thread"])
def test_a_forked_command_exits_and_prints_as_python_m(server, how):
    forked = server.run("tests.exit_as_told", [how], REPO_ROOT, timeout=60)
    real = subprocess.run(
        [sys.executable, "-m", "tests.exit_as_told", how], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert forked.returncode == real.returncode
    assert forked.stdout == real.stdout
    # Tracebacks name the runner's frames above the module's; the rest is the same.
    assert forked.stderr.splitlines()[-1:] == real.stderr.splitlines()[-1:]
    assert forked.stderr.splitlines()[0] == real.stderr.splitlines()[0] == "to stderr"


def test_a_forked_command_has_the_tests_environment_and_one_that_changed_it_is_not_served(
    server, monkeypatch
):
    assert server.serves()  # though PYTEST_CURRENT_TEST changed since the server started
    forked = server.run("tests.exit_as_told", ["env"], REPO_ROOT, timeout=60)
    assert forked.stdout.splitlines() == ["to stdout", os.environ["PYTEST_CURRENT_TEST"]]
    monkeypatch.setenv("SMOLLM2_FORKED_CLI_CHECK", "1")  # libraries read some variables at import
    assert not server.serves()


def test_a_command_past_its_timeout_is_killed_and_the_server_serves_the_next(server):
    with pytest.raises(subprocess.TimeoutExpired) as timed_out:
        server.run("tests.exit_as_told", ["sleep"], REPO_ROOT, timeout=1)
    assert timed_out.value.stderr == "to stderr\n"  # what it wrote before it was killed
    assert server.run("tests.exit_as_told", ["3"], REPO_ROOT, timeout=60).returncode == 3
