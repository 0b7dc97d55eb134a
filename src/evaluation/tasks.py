"""Zero-shot multiple-choice tasks as lists of `Example`s.

One local format any task converts to (`local:<file.jsonl>`, one `{"query": str, "choices":
[str, ...], "gold": int}` per line), and readers for the hub datasets SmolLM2 is judged on,
each mapping a row to an `Example` exactly as lm-evaluation-harness's task YAML does, on
the split it scores (its test split where the labels are public, else validation).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.data.text_file import read_text
from src.errors import UserError, first_line

# Between the context and a choice, as lm-evaluation-harness's default `target_delimiter`.
DELIMITER = " "
LOCAL = "local:"


@dataclass(frozen=True)
class Example:
    """One question. Each choice continues `query`; with `continuation` set (Winogrande's partial
    scoring) each choice is instead a context, which `continuation` follows."""

    query: str
    choices: tuple[str, ...]
    gold: int
    continuation: str | None = None

    def requests(self) -> list[tuple[str, str]]:
        """The (context, continuation) pairs whose log-likelihoods pick the answer."""
        if self.continuation is None:
            return [(self.query, DELIMITER + choice) for choice in self.choices]
        return [(choice, DELIMITER + self.continuation) for choice in self.choices]


@dataclass(frozen=True)
class Task:
    name: str
    examples: list[Example]


def read_local(path: Path) -> list[Example]:
    """A JSONL file of `{"query", "choices", "gold"}` lines, checked line by line."""
    examples = []
    for number, line in enumerate(read_text(path, "tasks=local:").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{where}: not JSON ({err.msg})") from None
        query, choices, gold = (
            row.get(k) if isinstance(row, dict) else None for k in ("query", "choices", "gold")
        )
        if not (
            isinstance(query, str)
            and isinstance(choices, list)
            and len(choices) >= 2
            and all(isinstance(c, str) and c for c in choices)
            and isinstance(gold, int)
            and not isinstance(gold, bool)
            and 0 <= gold < len(choices)
        ):
            raise UserError(
                f'{where}: each line must be {{"query": str, "choices": [str, str, ...], "gold": int}} '
                "with at least two non-empty choices and gold an index into them"
            )
        examples.append(Example(query, tuple(choices), gold))
    if not examples:
        raise UserError(f"{path}: no questions in the file")
    return examples


def _hellaswag_text(text: str) -> str:
    """lm-evaluation-harness's hellaswag/utils.py `preprocess`: WikiHow's bracket artifacts removed."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: dict[str, Any]) -> Example:
    context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return Example(
        _hellaswag_text(row["activity_label"] + ": " + context),
        tuple(_hellaswag_text(ending) for ending in row["endings"]),
        int(row["label"]),
    )


def arc(row: dict[str, Any]) -> Example:
    choices = row["choices"]
    return Example(
        f"Question: {row['question']}\nAnswer:",
        tuple(choices["text"]),
        choices["label"].index(row["answerKey"]),
    )


def piqa(row: dict[str, Any]) -> Example:
    return Example(f"Question: {row['goal']}\nAnswer:", (row["sol1"], row["sol2"]), int(row["label"]))


def openbookqa(row: dict[str, Any]) -> Example:
    choices = row["choices"]
    return Example(
        row["question_stem"], tuple(choices["text"]), choices["label"].index(row["answerKey"].lstrip())
    )


def winogrande(row: dict[str, Any]) -> Example:
    """Partial scoring: the sentence up to the blank, with each option, is the context; the rest
    of the sentence is the continuation scored."""
    blank = row["sentence"].index("_")
    prefix = row["sentence"][:blank]
    return Example(
        row["sentence"],
        (prefix + row["option1"], prefix + row["option2"]),
        {"1": 0, "2": 1}[row["answer"]],
        continuation=row["sentence"][blank + 1 :].strip(),
    )


def mmlu(row: dict[str, Any]) -> Example:
    """The cloze ("continuation") form: the answers' texts are scored, not the letters A-D."""
    subject = row["subject"].replace("_", " ")
    description = f"The following are questions (with answers) about {subject}.\n\n"
    query = f"{description}Question: {row['question'].strip()}\nAnswer:"
    return Example(query, tuple(row["choices"]), int(row["answer"]))


# name -> (dataset, its configuration, split, row -> Example), as lm-evaluation-harness names them.
HUB_TASKS: dict[str, tuple[str, str | None, str, Callable[[dict[str, Any]], Example]]] = {
    "hellaswag": ("Rowan/hellaswag", None, "validation", hellaswag),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test", arc),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test", arc),
    "piqa": ("baber/piqa", None, "validation", piqa),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation", winogrande),
    "openbookqa": ("allenai/openbookqa", "main", "test", openbookqa),
    "mmlu": ("cais/mmlu", "all", "test", mmlu),
}


def read_hub(name: str) -> list[Example]:
    """A task from the Hugging Face hub (or the local datasets cache), in one line when unreachable."""
    import datasets

    path, config, split, to_example = HUB_TASKS[name]
    try:
        rows = datasets.load_dataset(path, config, split=split)
    except Exception as err:  # network, missing cache, auth: every way the hub can fail
        raise UserError(
            f"task {name}: cannot load {path} from the Hugging Face hub ({first_line(err)}); "
            f"without the hub, write it as JSONL and pass tasks=local:<file>"
        ) from None
    return [to_example(row) for row in rows]


def task_name(spec: str) -> str:
    """A task's name in tables and logs: a local file's stem, else the spec itself."""
    return Path(spec.removeprefix(LOCAL)).stem if spec.startswith(LOCAL) else spec


def load_task(spec: str) -> Task:
    """`local:<file.jsonl>` (named after the file) or one of `HUB_TASKS`."""
    if spec.startswith(LOCAL):
        return Task(task_name(spec), read_local(Path(spec.removeprefix(LOCAL))))
    check_task(spec)
    return Task(spec, read_hub(spec))


def check_task(spec: str) -> None:
    """What `load_task` refuses, short of reaching the hub: an unknown name, or a local file that
    is missing or not questions (a training run checks its tasks before it writes anything)."""
    if spec.startswith(LOCAL):
        read_local(Path(spec.removeprefix(LOCAL)))
    elif spec not in HUB_TASKS:
        raise UserError(f"unknown task {spec!r}; choose from {', '.join(HUB_TASKS)} or local:<file.jsonl>")


def parse_tasks(specs: str) -> list[str]:
    """`hellaswag,arc_easy,local:mine.jsonl` -> its names, at least one, named apart."""
    names = [s.strip() for s in specs.split(",") if s.strip()]
    if not names:
        raise UserError(
            f"no tasks given; pass tasks=<{','.join(HUB_TASKS)} or local:<file.jsonl>, comma-separated>"
        )
    check_distinct_names(names)
    return names


def check_distinct_names(specs: list[str]) -> None:
    """No two tasks share a name (a local task is named after its file): the scores of one
    would replace the other's in the table, the JSON and the logged metrics."""
    seen: dict[str, str] = {}
    for spec in specs:
        name = task_name(spec)
        if name in seen:
            raise UserError(
                f"tasks {seen[name]} and {spec} are both named {name!r}; rename one file, or give a task once"
            )
        seen[name] = spec


def sample(examples: list[Example], limit: int | None, seed: int = 0) -> list[Example]:
    """A fixed sample of `limit` examples (the same for the same seed), in file order; all if None."""
    if limit is None or limit >= len(examples):
        return examples
    if limit < 1:
        raise UserError(f"limit={limit}: evaluate at least 1 example per task, or null for all")
    return [examples[i] for i in sorted(random.Random(seed).sample(range(len(examples)), limit))]
