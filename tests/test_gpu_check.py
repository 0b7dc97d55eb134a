"""The GPU check's --dry-run: every step of the prepared GPU script, end to end on the CPU."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from benchmarks.gpu_check import STEPS
from tests.conftest import REPO_ROOT


@pytest.mark.slow
def test_the_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    report = tmp_path / "report.md"
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_check",
        "--dry-run",
        f"--out={report}",
        f"--work={tmp_path}",
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    text = report.read_text()
    statuses = re.findall(r"^\| (\d) \| (.+?) \| (.+?) \| \d+ \|$", text, flags=re.MULTILINE)
    assert [(int(n), title, status) for n, title, status in statuses] == [
        (n, step.title, "ok") for n, step in enumerate(STEPS, 1)
    ], text
    for n, step in enumerate(STEPS, 1):
        assert f"## {n}. {step.title}" in text
    assert "| mode | dry run on the CPU" in text
    assert "**NOT met**" not in text  # a CPU run claims no GPU target, either way
    assert text.count("skipped: no CUDA") >= 6  # the census, train step (3), generation, attention (2)
    assert "zero host reads in the quiet steps [1, 2, 3, 5, 7, 9, 10, 11] (0): met" in text
