"""src.evaluate's acc and acc_norm against lm-evaluation-harness's, on the same questions and model.

    python -m benchmarks.lm_eval_crosscheck --hf-path <exported or released folder> --text <file.txt>

Needs `lm_eval` (pip install "lm_eval[hf]"; not a dependency of this project). Writes a
task of `--questions` multiple-choice questions built from the text (which of four lines
follows a given line), as our local JSONL and as a harness task YAML over that same file,
scores it with both (the harness through its Hugging Face backend, float32, batch size 1,
offline), and prints both accuracies and the largest difference of any choice's
log-likelihood. Exits 1 when the accuracies differ by more than 1e-6. `--write-task <file>`
only writes the questions, for `python -m src.evaluate tasks=local:<file>`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

from benchmarks.common import positive_int
from src.errors import UserError, exit_on_user_error, os_error_reason

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TASK = "smollm2_crosscheck_next_line"
TASK_YAML = """task: TASK
dataset_path: json
dataset_kwargs:
  data_files:
    test: DATA
output_type: multiple_choice
test_split: test
doc_to_text: "{{query}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{gold}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def next_line_questions(text: str, count: int, seed: int = 0) -> list[dict]:
    """Which of four lines follows `query`: the true next line and three others from the text,
    in a seeded random order. Lines of a few words or more only, so choices differ in length."""
    lines = [line.strip() for line in text.splitlines()]
    pairs = [(a, b) for a, b in zip(lines, lines[1:], strict=False) if len(a) > 15 and len(b) > 15]
    pool = sorted({b for _, b in pairs})
    if count > len(pairs):
        raise UserError(
            f"the text has {len(pairs)} usable pairs of lines; ask for at most {len(pairs)} --questions"
        )
    rng = random.Random(seed)
    questions = []
    for query, answer in rng.sample(pairs, count):
        choices = [answer, *rng.sample([line for line in pool if line != answer], 3)]
        rng.shuffle(choices)
        questions.append({"query": query, "choices": choices, "gold": choices.index(answer)})
    return questions


def ours(hf_path: str, data: Path) -> tuple[dict[str, float], list[list[float]]]:
    from src.evaluation.scoring import accuracies, choice_loglikelihoods
    from src.evaluation.tasks import read_local
    from src.serving.inference import ModelSource, read_source

    model, tokenizer, _ = read_source(ModelSource(hf_path=hf_path))
    examples = read_local(data)
    lls = choice_loglikelihoods(model.eval(), tokenizer, examples)
    scores = accuracies(examples, lls)
    return {"acc": scores.acc, "acc_norm": scores.acc_norm}, lls


def harness(hf_path: str, folder: Path) -> tuple[dict[str, float], list[list[float]]]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={hf_path},dtype=float32",
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(folder)),
        device="cpu",
        batch_size=1,
        log_samples=True,
    )
    metrics = out["results"][TASK]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    lls = [[float(resp[0][0]) for resp in s["resps"]] for s in samples]
    return {"acc": metrics["acc,none"], "acc_norm": metrics["acc_norm,none"]}, lls


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf-path", help="a Hugging Face model folder (src.export writes one)")
    parser.add_argument("--text", required=True, help="a text file with many lines (e.g. tiny Shakespeare)")
    parser.add_argument("--questions", type=positive_int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write-task", help="only write the questions to this JSONL file (tasks=local:<it>)")
    args = parser.parse_args(argv)
    try:
        text = Path(args.text).read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"--text {args.text}: cannot read it ({os_error_reason(err)})") from None
    questions = next_line_questions(text, args.questions, args.seed)
    if args.write_task:
        Path(args.write_task).write_text("".join(json.dumps(q) + "\n" for q in questions))
        return 0
    if not args.hf_path:
        parser.error("--hf-path is required unless --write-task is given")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = folder / "questions.jsonl"
        data.write_text("".join(json.dumps(q) + "\n" for q in questions))
        (folder / f"{TASK}.yaml").write_text(TASK_YAML.replace("TASK", TASK).replace("DATA", str(data)))
        our_scores, our_lls = ours(args.hf_path, data)
        their_scores, their_lls = harness(args.hf_path, folder)

    worst = max(
        abs(a - b) for x, y in zip(our_lls, their_lls, strict=True) for a, b in zip(x, y, strict=True)
    )
    print(f"{len(questions)} questions, {sum(map(len, our_lls))} choices, model {args.hf_path}")
    print("| implementation | acc | acc_norm |")
    print("|---|---:|---:|")
    for name, scores in (
        ("src.evaluate", our_scores),
        (f"lm-evaluation-harness {version('lm_eval')} (hf)", their_scores),
    ):
        print(f"| {name} | {scores['acc']:.6f} | {scores['acc_norm']:.6f} |")
    print(f"largest |difference| of a choice's log-likelihood: {worst:.2e}")
    equal = all(abs(our_scores[k] - their_scores[k]) <= 1e-6 for k in ("acc", "acc_norm"))
    print("equal to 1e-6" if equal else "DIFFERENT")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
