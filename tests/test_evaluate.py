"""`python -m src.evaluate`: the scores of src/evaluation as a table and a JSON file; one-line errors."""

from __future__ import annotations

import json

import pytest

from src.data.tokenizer import load_tokenizer
from src.evaluate import main
from src.evaluation.perplexity import perplexity
from src.evaluation.scoring import score
from src.evaluation.tasks import read_local, sample
from tests.helpers import tiny_checkpoint, write_questions
from tests.training import write_text


@pytest.fixture(scope="module")
def files(module_tmp_path):
    tmp = module_tmp_path
    model = tiny_checkpoint(tmp / "tiny.ckpt")
    return (
        model,
        tmp / "tiny.ckpt",
        write_questions(tmp / "questions.jsonl", count=20),
        write_text(tmp / "t.txt", 300),
    )


def test_the_table_and_json_hold_the_scores_of_the_sample_and_the_perplexity(files, tmp_path, capsys):
    model, ckpt, questions, text = files
    out_file = tmp_path / "eval" / "result.json"
    args = [
        f"ckpt_path={ckpt}",
        f"tasks=local:{questions}",
        "limit=8",
        f"text_file={text}",
        "window=32",
        "stride=16",
    ]
    main([*args, f"out_file={out_file}"])
    stdout = capsys.readouterr().out

    tokenizer = load_tokenizer(None)
    expected = score(model, tokenizer, sample(read_local(questions), 8, seed=0))
    ids = [tokenizer.eos_token_id, *tokenizer.encode(text.read_text())]
    ppl = perplexity(model, ids, window=32, stride=16)
    results = json.loads(out_file.read_text())
    assert results["tasks"]["questions"] == {"acc": expected.acc, "acc_norm": expected.acc_norm, "n": 8}
    assert results["perplexity"]["perplexity"] == pytest.approx(ppl.perplexity, rel=1e-6)
    assert results["perplexity"]["tokens"] == len(ids) - 1
    assert f"| questions | 8 | {expected.acc:.4f} | {expected.acc_norm:.4f} |" in stdout.splitlines()
    assert f"perplexity of {text}: {ppl.perplexity:.3f}" in stdout


def test_the_default_output_goes_to_outputs_eval(files, tmp_path, monkeypatch, capsys):
    _, ckpt, questions, _ = files
    monkeypatch.chdir(tmp_path)
    main([f"ckpt_path={ckpt}", f"tasks=local:{questions}", "limit=2"])
    [written] = (tmp_path / "outputs" / "eval").glob("tiny_*.json")
    assert json.loads(written.read_text())["tasks"]["questions"]["n"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "nothing to evaluate"),
        (("tasks=nope",), "unknown task 'nope'"),
        (("tasks=local:/no/such.jsonl",), "/no/such.jsonl: text file not found; pass tasks=local:<an"),
        (("tasks=local:BINARY",), "BINARY: not UTF-8 (byte 0); convert it with iconv -t utf-8"),
        (("tasks=local:QUESTIONS,local:OTHER/questions.jsonl",), "both named 'questions'; rename one file"),
        (("tasks=local:QUESTIONS", "limit=0"), "limit=0"),
        (("text_file=/no/such.txt",), "/no/such.txt: text file not found; pass text_file=<an existing"),
        (("text_file=BINARY",), "BINARY: not UTF-8 (byte 0)"),
        (("text_file=OTHER",), "OTHER is a folder; pass text_file=<a UTF-8 text file>"),
        (("text_file=TEXT", "window=0"), "window=0: use a positive number of tokens"),
        (("text_file=TEXT", "stride=0"), "stride=0, window=2048: use 0 < stride <= window"),
        # Refused before the model loads, though a missing task would be refused next.
        (("tasks=nope", "out_file=/proc/no/such/x.json"), "cannot write out_file=/proc/no/such/x.json"),
        (("tasks=nope", "out_file=/tmp"), "out_file=/tmp is a folder"),
    ],
)
def test_bad_input_is_one_error_line(files, tmp_path, capsys, args, message):
    _, ckpt, questions, text = files
    binary, other = tmp_path / "binary.txt", tmp_path / "other"
    binary.write_bytes(b"\xff\xfe not text")
    other.mkdir()
    places = {"QUESTIONS": questions, "TEXT": text, "BINARY": binary, "OTHER": other}
    for mark, place in places.items():
        args = [a.replace(mark, str(place)) for a in args]
        message = message.replace(mark, str(place))
    with pytest.raises(SystemExit) as exit_:
        main([f"ckpt_path={ckpt}", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
