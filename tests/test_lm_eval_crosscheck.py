"""benchmarks/lm_eval_crosscheck.py on a tiny exported model: our accuracies equal the harness's."""

from __future__ import annotations

import pytest

from src.export import export_checkpoint
from tests.helpers import run_cli, tiny_checkpoint
from tests.training import write_text

pytestmark = pytest.mark.slow  # lm_eval's import and its one-request batches take a minute


def test_src_evaluate_and_lm_evaluation_harness_agree(tmp_path):
    pytest.importorskip("lm_eval", reason="lm_eval is not a dependency; pip install 'lm_eval[hf]'")
    tiny_checkpoint(tmp_path / "tiny.ckpt")
    export_checkpoint(tmp_path / "tiny.ckpt", tmp_path / "hf")
    text = write_text(tmp_path / "text.txt", words=1200)
    result = run_cli(
        "benchmarks.lm_eval_crosscheck",
        "--hf-path",
        str(tmp_path / "hf"),
        "--text",
        str(text),
        "--questions",
        "40",
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "equal to 1e-6" in result.stdout
