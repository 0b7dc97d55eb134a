"""Task readers: the local JSONL format, the fixed sample, and each hub row mapped as the harness maps it."""

from __future__ import annotations

import json

import pytest

from src.errors import UserError
from src.evaluation import tasks
from src.evaluation.tasks import Example, load_task, parse_tasks, read_local, sample
from tests.helpers import write_questions


def test_a_local_file_reads_into_examples_named_after_it(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        json.dumps({"query": "Two and two make", "choices": ["four", "five"], "gold": 0}) + "\n\n"
    )
    task = load_task(f"local:{path}")
    assert task.name == "mine"
    assert task.examples == [Example("Two and two make", ("four", "five"), 0)]
    assert task.examples[0].requests() == [("Two and two make", " four"), ("Two and two make", " five")]


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        json.dumps({"query": "q", "choices": ["a", "b"], "gold": 2}),
        json.dumps({"query": "q", "choices": ["a"], "gold": 0}),
        json.dumps({"query": "q", "choices": ["a", ""], "gold": 0}),
        json.dumps({"question": "q", "choices": ["a", "b"], "gold": 0}),
        json.dumps(["q", ["a", "b"], 0]),
    ],
)
def test_a_bad_line_is_one_error_naming_the_file_and_line(tmp_path, line):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 1}) + "\n" + line + "\n")
    with pytest.raises(UserError, match=rf"^{path}:2: ") as err:
        read_local(path)
    assert "\n" not in str(err.value)


def test_unknown_tasks_and_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="unknown task 'hellaswagg'; choose from hellaswag, arc_easy"):
        load_task("hellaswagg")
    with pytest.raises(UserError, match="text file not found; pass tasks=local:<an existing UTF-8 file>"):
        load_task(f"local:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(UserError, match=r"tasks local:a/q.jsonl and local:b/q.jsonl are both named 'q'"):
        parse_tasks("hellaswag,local:a/q.jsonl,local:b/q.jsonl")


def test_the_sample_is_fixed_by_its_seed_and_keeps_file_order(tmp_path):
    examples = read_local(write_questions(tmp_path / "q.jsonl", count=30))
    first = sample(examples, 10, seed=0)
    assert first == sample(examples, 10, seed=0) != sample(examples, 10, seed=1)
    assert [examples.index(e) for e in first] == sorted(examples.index(e) for e in first)
    assert sample(examples, None) == sample(examples, 99) == examples


def test_hub_rows_map_as_the_harness_yamls_map_them():
    arc = {
        "question": "Which gas do plants take in?",
        "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]},
        "answerKey": "B",
    }
    assert tasks.arc(arc) == Example(
        "Question: Which gas do plants take in?\nAnswer:", ("oxygen", "carbon dioxide"), 1
    )
    obqa = {"question_stem": "The sun is", "choices": {"text": ["a star", "a moon"], "label": ["A", "B"]}}
    assert tasks.openbookqa({**obqa, "answerKey": " A"}) == Example("The sun is", ("a star", "a moon"), 0)
    piqa = {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0}
    assert tasks.piqa(piqa) == Example("Question: Open a jar\nAnswer:", ("twist the lid", "eat the lid"), 0)
    hellaswag = {
        "activity_label": "Baking cookies",
        "ctx_a": "A woman mixes flour. [title] She",
        "ctx_b": "then",
        "endings": ["adds  eggs [step] slowly.", "sings."],
        "label": "0",
    }
    assert tasks.hellaswag(hellaswag) == Example(
        "Baking cookies: A woman mixes flour.. She Then", ("adds eggs slowly.", "sings."), 0
    )
    wino = {
        "sentence": "The cup broke because _ was thin.",
        "option1": "the cup",
        "option2": "the floor",
        "answer": "1",
    }
    assert tasks.winogrande(wino) == Example(
        wino["sentence"],
        ("The cup broke because the cup", "The cup broke because the floor"),
        0,
        continuation="was thin.",
    )
    mmlu = {
        "subject": "high_school_physics",
        "question": " What is g? ",
        "choices": ["9.8", "1"],
        "answer": 0,
    }
    assert tasks.mmlu(mmlu) == Example(
        "The following are questions (with answers) about high school physics.\n\n"
        "Question: What is g?\nAnswer:",
        ("9.8", "1"),
        0,
    )
