"""callbacks.downstream_eval: the accuracies a run logs are src.evaluate's on the same sample."""

from __future__ import annotations

from src.evaluate import EvaluateConfig, evaluate
from tests.helpers import write_questions
from tests.training import fast_overrides, logged, run_training, write_text


def test_the_logged_accuracies_equal_src_evaluate_on_the_same_sample(tmp_path):
    questions = write_questions(tmp_path / "questions.jsonl", count=30)
    overrides = fast_overrides(
        tmp_path,
        write_text(tmp_path / "text.txt"),
        "trainer.max_steps=2",
        "optim.lr=1e-2",
        "val_at_start=false",
        "kernels=[]",
        f"callbacks.downstream_eval.tasks=['local:{questions}']",
        "callbacks.downstream_eval.every_n_steps=2",
        "callbacks.downstream_eval.limit=12",
    )
    run_training(overrides)

    run = tmp_path / "run"
    acc, acc_norm = logged(run, "eval/questions/acc"), logged(run, "eval/questions/acc_norm")
    # At the start and after step 2 (in step 2's row), not twice at the end.
    assert sorted(acc) == sorted(acc_norm) == [0, 2]
    cfg = EvaluateConfig(
        ckpt_path=str(run / "checkpoints" / "last.ckpt"), tasks=f"local:{questions}", limit=12
    )
    scores = evaluate(cfg)["tasks"]["questions"]
    assert (acc[2], acc_norm[2]) == (scores["acc"], scores["acc_norm"])
    assert scores["n"] == 12
