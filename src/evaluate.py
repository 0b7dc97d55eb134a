"""Score a model on zero-shot multiple-choice tasks and, optionally, its perplexity over a text file.

python -m src.evaluate ckpt_path=<.ckpt> tasks=local:questions.jsonl
python -m src.evaluate hf_path=<dir> tasks=hellaswag,arc_easy,piqa limit=500 text_file=notes.txt

`acc` and `acc_norm` are computed as lm-evaluation-harness computes them
(src/evaluation/scoring.py; benchmarks/lm_eval_crosscheck.py checks it). `limit` scores a
fixed sample of that many questions per task (the same for the same `seed`). Results go to
stdout as a table and to `out_file` (default outputs/eval/<model>_<time>.json,
<model> as `model_name` spells it) as JSON.
The model runs in plain PyTorch, without the CPU kernels, so scores compare across machines.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from src.cli import parse_cli
from src.errors import UserError, exit_on_user_error
from src.evaluation.perplexity import file_perplexity
from src.evaluation.scoring import score
from src.evaluation.tasks import load_task, parse_tasks, sample
from src.files import atomic_write, check_output_file
from src.outputs import default_output_dir
from src.serving.inference import ModelSource, read_source, resolve_device, resolve_dtype


@dataclass
class EvaluateConfig(ModelSource):
    tasks: str = (
        ""  # comma-separated: hellaswag,arc_easy,arc_challenge,piqa,winogrande,openbookqa,mmlu,local:<file>
    )
    limit: int | None = None  # questions per task (a fixed sample); null: all
    seed: int = 0  # which sample `limit` takes
    text_file: str | None = None  # also report perplexity over this file
    window: int | None = None  # perplexity's window in tokens; null: the model's context, at most 2,048
    stride: int | None = None  # null: half the window
    batch_size: int = 16
    out_file: str | None = None  # null: outputs/eval/<model>_<time>.json


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Every task's scores and the text's perplexity, as the JSON file holds them."""
    if not cfg.tasks.strip() and cfg.text_file is None:
        raise UserError("nothing to evaluate: pass tasks=<name,...> and/or text_file=<file>")
    if cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size}: use at least 1")
    device, dtype = resolve_device(cfg.device), resolve_dtype(cfg.dtype)
    tasks = [load_task(spec) for spec in parse_tasks(cfg.tasks)] if cfg.tasks.strip() else []
    model, tokenizer, path = read_source(cfg)
    model = model.to(device=device, dtype=dtype).eval()
    results: dict[str, Any] = {"model": str(path), "config": asdict(cfg), "tasks": {}}
    for task in tasks:
        examples = sample(task.examples, cfg.limit, cfg.seed)
        results["tasks"][task.name] = asdict(score(model, tokenizer, examples, cfg.batch_size))
    if cfg.text_file is not None:
        ppl = file_perplexity(model, tokenizer, Path(cfg.text_file), cfg.window, cfg.stride)
        results["perplexity"] = {"file": cfg.text_file, **asdict(ppl)}
    return results


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, and the perplexity in a line below it."""
    lines = []
    if results["tasks"]:
        lines += ["| task | questions | acc | acc_norm |", "|---|---:|---:|---:|"]
    for name, s in results["tasks"].items():
        lines.append(f"| {name} | {s['n']} | {s['acc']:.4f} | {s['acc_norm']:.4f} |")
    if "perplexity" in results:
        p = results["perplexity"]
        lines.append(
            f"perplexity of {p['file']}: {p['perplexity']:.3f} ({p['tokens']:,} tokens, "
            f"window {p['window']}, stride {p['stride']})"
        )
    return "\n".join(lines)


def model_name(path: Path) -> str:
    """`<run folder>_<checkpoint>` for a run's checkpoint, the folder's name for a Hugging Face folder."""
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}_{path.stem}"
    return path.stem if path.is_file() else path.name


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(EvaluateConfig, argv)
    if cfg.out_file:  # before the model loads and the questions are scored
        check_output_file(Path(cfg.out_file), "out_file")
    results = evaluate(cfg)
    name = model_name(Path(results["model"]))
    out = (
        Path(cfg.out_file)
        if cfg.out_file
        else default_output_dir("eval") / f"{name}_{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as f:  # an earlier file of that name stays whole if this write fails
        f.write(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
