"""`python -m src.generate`: the same tokens as `generate`, streamed, with one-line errors."""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.data.tokenizer import DEFAULT_TOKENIZER
from src.errors import UserError
from src.generate import main
from src.models import SmolLM2, generate
from src.models.hf import write_hf_folder
from src.serving.inference import IncrementalDecoder, ModelSource, Sampling, TextGenerator, read_source
from tests.conftest import REPO_ROOT
from tests.helpers import run_cli, run_plain, tiny_checkpoint

PROMPT = "Once upon a time"
# SmolLM2-Instruct's ChatML template, cut to what a prompt of one user turn needs.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tokenizer_folder(path: Path, **config) -> Path:
    """A copy of the vendored tokenizer with `config` merged into its tokenizer_config.json."""
    shutil.copytree(DEFAULT_TOKENIZER, path)
    config_file = path / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), **config}))
    return path


@pytest.fixture(scope="module")
def tiny(module_tmp_path) -> tuple[SmolLM2, str]:
    path = module_tmp_path / "tiny.ckpt"
    return tiny_checkpoint(path), str(path)


@pytest.fixture(autouse=True)
def _outputs_in_tmp(tmp_path, monkeypatch) -> None:
    """Completions are also written under outputs/ of the working directory: keep them in tmp_path."""
    monkeypatch.chdir(tmp_path)


def expected_text(model: SmolLM2, tokenizer, prompt: str, max_new_tokens: int, **kwargs) -> str:
    """What `generate` produces for the prompt, decoded, without the EOS that ends it."""
    ids = torch.tensor([tokenizer.encode(prompt)])
    eos = tokenizer.eos_token_id
    new = generate(model, ids, max_new_tokens, eos_id=eos, **kwargs)[0, ids.shape[1] :].tolist()
    return tokenizer.decode([t for t in new if t != eos])


def run_main(capsys, *args: str) -> tuple[str, str]:
    main(list(args))
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_greedy_output_equals_generate_and_stdout_has_only_text(tiny, tokenizer, capsys):
    model, ckpt = tiny
    out, err = run_main(capsys, f"ckpt_path={ckpt}", f"prompt={PROMPT}", "temperature=0", "max_new_tokens=12")
    assert out == expected_text(model, tokenizer, PROMPT, 12) + "\n"
    assert "tokens/s" in err and "tokens/s" not in out


def test_seeded_sampling_is_reproducible_and_matches_generate(tiny, tokenizer, capsys):
    model, ckpt = tiny
    args = (f"ckpt_path={ckpt}", f"prompt={PROMPT}", "temperature=1.0", "top_k=50", "max_new_tokens=16")
    first, _ = run_main(capsys, *args, "seed=3")
    again, _ = run_main(capsys, *args, "seed=3")
    other, _ = run_main(capsys, *args, "seed=4")
    assert first == again != other
    sampled = expected_text(model, tokenizer, PROMPT, 16, temperature=1.0, top_k=50, seed=3)
    assert first == sampled + "\n"


def test_prompt_file_and_num_samples(tiny, tmp_path, capsys):
    _, ckpt = tiny
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The king said\n\nIn 2024, 日本\n", encoding="utf-8")
    common = (f"ckpt_path={ckpt}", "max_new_tokens=8", "seed=5")
    out, err = run_main(capsys, *common, f"prompt_file={prompts}", "num_samples=2")
    completions = out.removesuffix("\n").split("\n---\n")
    assert len(completions) == 4 and completions[0] != completions[1]
    for index, prompt in enumerate(["The king said", "In 2024, 日本"]):
        for sample in range(2):
            alone, _ = run_main(capsys, *common[:2], f"seed={5 + sample}", f"prompt={prompt}")
            assert completions[2 * index + sample] + "\n" == alone
    assert "32 tokens" in err


def test_completions_are_saved_with_their_settings(tiny, tmp_path, capsys):
    _, ckpt = tiny
    out, err = run_main(
        capsys, f"ckpt_path={ckpt}", "max_new_tokens=6", "seed=5", "num_samples=2", f"prompt={PROMPT}"
    )
    (saved,) = (tmp_path / "outputs" / "generate").glob("*.jsonl")  # the default out_file
    rows = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [row["completion"] for row in rows] == out.removesuffix("\n").split("\n---\n")
    assert [row["prompt"] for row in rows] == [PROMPT, PROMPT]
    assert [row["settings"]["seed"] for row in rows] == [5, 6]
    assert rows[0]["settings"]["ckpt_path"] == ckpt and rows[0]["settings"]["max_new_tokens"] == 6
    assert err.endswith(f"wrote {saved}\n")


def test_bfloat16_generates(tiny, capsys):
    _, ckpt = tiny
    out, err = run_main(capsys, f"ckpt_path={ckpt}", "prompt=Hello", "dtype=bfloat16", "max_new_tokens=4")
    assert out.strip() and "tokens/s" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_greedy_streams(tiny, capsys):
    _, ckpt = tiny
    args = (f"ckpt_path={ckpt}", f"prompt={PROMPT}", "temperature=0", "max_new_tokens=8", "dtype=bfloat16")
    on_gpu, _ = run_main(capsys, *args, "device=cuda")
    assert on_gpu.strip()


def test_multibyte_characters_stream_whole(tokenizer):
    text = "naïve café 🙂🚀 日本語のテキスト"
    ids = tokenizer.encode(text)
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids]
    assert any("\ufffd" in tokenizer.decode(ids[: k + 1]) for k in range(len(ids)))  # a split character
    assert "".join(pieces) + decoder.flush() == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_completion_streams_piece_by_piece(tiny):
    _, ckpt = tiny
    generator = TextGenerator.load(ModelSource(ckpt_path=ckpt))
    completion = generator.complete(generator.encode(PROMPT, 10), Sampling(max_new_tokens=10, temperature=0))
    pieces = list(completion)
    assert len(pieces) > 1 and "".join(pieces) == completion.text
    assert completion.num_tokens == 10 and completion.tokens_per_second > 0


def test_special_tokens_are_left_out_of_streamed_text(tokenizer):
    """An instruct model's end of turn and the next turn's header are control, not text."""
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert tokenizer.added_tokens_decoder[im_start].special and tokenizer.added_tokens_decoder[im_end].special
    ids = [
        *tokenizer.encode("Paris."),
        im_end,
        *tokenizer.encode("\n"),
        im_start,
        *tokenizer.encode("assistant"),
    ]
    decoder = IncrementalDecoder(tokenizer)
    assert "".join(decoder.push(i) for i in ids) + decoder.flush() == "Paris.\nassistant"


def test_generation_stops_at_an_end_id_of_generation_config(tiny, tokenizer, tmp_path, capsys):
    """An HF folder's generation_config.json may list end ids besides the tokenizer's EOS
    (SmolLM2-Instruct's <|im_end|>); the count covers the tokens before the stop only."""
    model, _ = tiny
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    first, second = generate(model, ids, 2)[0, ids.shape[1] :].tolist()
    assert first != second and tokenizer.eos_token_id not in (first, second)
    folder = tmp_path / "hf"
    write_hf_folder(model, model.config, folder)
    generation_config = {"eos_token_id": [tokenizer.eos_token_id, second]}
    (folder / "generation_config.json").write_text(json.dumps(generation_config))
    args = (f"hf_path={folder}", f"tokenizer={DEFAULT_TOKENIZER}", f"prompt={PROMPT}", "temperature=0")
    out, err = run_main(capsys, *args)
    assert out == tokenizer.decode([first]) + "\n"
    assert err.startswith("1 token in ") or "\n1 token in " in err, err


def test_chat_wraps_the_prompt_as_one_user_turn(tiny, tmp_path, capsys):
    _, ckpt = tiny
    folder = tokenizer_folder(tmp_path / "chat-tokenizer", chat_template=CHATML)
    generator = TextGenerator.load(ModelSource(ckpt_path=ckpt, tokenizer=str(folder)))
    turn = "<|im_start|>user\nWhat is a king?<|im_end|>\n<|im_start|>assistant\n"
    expected = generator.tokenizer.encode(turn)
    assert expected[0] == generator.tokenizer.convert_tokens_to_ids("<|im_start|>")  # one special token
    assert generator.encode("What is a king?", 5, chat=True)[0].tolist() == expected
    args = (f"ckpt_path={ckpt}", f"tokenizer={folder}", "prompt=What is a king?", "max_new_tokens=4")
    chat_out, _ = run_main(capsys, *args, "chat=true", "temperature=0")
    plain_out, _ = run_main(capsys, *args, "temperature=0")
    assert chat_out != plain_out
    (saved, *_) = sorted((tmp_path / "outputs" / "generate").glob("*.jsonl"))
    assert json.loads(saved.read_text().splitlines()[0])["settings"]["chat"] is True


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_and_a_smaller_one_works(tiny, tmp_path, capsys):
    model, ckpt = tiny
    larger = tokenizer_folder(tmp_path / "larger")
    tokens = json.loads((larger / "tokenizer.json").read_text())
    tokens["added_tokens"].append({**tokens["added_tokens"][-1], "id": 49152, "content": "<|new|>"})
    (larger / "tokenizer.json").write_text(json.dumps(tokens))
    with pytest.raises(
        UserError, match=r"^the tokenizer has 49,153 tokens but the model's vocabulary has 49,152; "
    ):
        read_source(ModelSource(ckpt_path=ckpt, tokenizer=str(larger)))
    padded = SmolLM2(dataclasses.replace(model.config, vocab_size=49216))  # a vocabulary padded to 64
    write_hf_folder(padded, padded.config, tmp_path / "padded")
    out, _ = run_main(capsys, f"hf_path={tmp_path / 'padded'}", f"tokenizer={DEFAULT_TOKENIZER}", "prompt=Hi")
    assert out.strip()


def test_a_folder_of_the_wrong_kind_names_the_setting_to_use(tiny, tmp_path):
    model, ckpt = tiny
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    shutil.copy(ckpt, last)
    hf = tmp_path / "hf"
    write_hf_folder(model, model.config, hf)
    (hf / "model.safetensors").write_bytes(b"not weights")  # refused before the weights are read
    cases = {
        f"ckpt_path={hf} is a Hugging Face folder (it has config.json); pass hf_path={hf}": {
            "ckpt_path": str(hf)
        },
        f"hf_path={run} is a training run's folder, not a Hugging Face one; pass ckpt_path={last}": {
            "hf_path": str(run)
        },
        f"{last.parent} is a checkpoints folder; pass its checkpoint, {last}": {
            "ckpt_path": str(last.parent)
        },
        f"hf_path={hf} has no tokenizer (no tokenizer.json); pass tokenizer=<tokenizer folder>": {
            "hf_path": str(hf)
        },
        "tokenizer '/nonexistent/path': no such folder; give a tokenizer folder or a hub id": {
            "ckpt_path": ckpt,
            "tokenizer": "/nonexistent/path",
        },
    }
    for message, source in cases.items():
        with pytest.raises(UserError) as info:
            read_source(ModelSource(**source))
        assert str(info.value) == message


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("prompt=",), "the prompt is empty"),
        (
            ("prompt=Hi", "chat=true"),
            "chat mode needs a chat template, and this tokenizer has none; pass tokenizer=",
        ),
        (("prompt=   ",), "the prompt is empty"),
        (("prompt=" + "hello " * 2100,), "exceeds the model's context of 2048 tokens"),
        (("prompt=Hi", "max_new_tokens=5000"), "exceeds the model's context"),
        (("prompt=Hi", "hf_path=somewhere"), "give exactly one of hf_path"),
        (("prompt=Hi", "temperature=-1"), "temperature=-1.0"),
        (("prompt=Hi", "temperature=nan"), "temperature=nan: use 0 for greedy or a finite value >= 0.01"),
        (("prompt=Hi", "temperature=1e-45"), "temperature=1e-45: use 0 for greedy"),
        (("prompt=Hi", "temperature=inf"), "temperature=inf"),
        (("prompt=Hi", "device=mps"), "device=mps: use auto, cpu, cuda or cuda:N"),
        (
            ("prompt=Hi", "seed=99999999999999999999"),
            "seed=99999999999999999999: use an integer in [0, 2**64)",
        ),
        (("prompt=Hi", "seed=-1"), "seed=-1: use an integer in [0, 2**64)"),
        (("prompt=Hi", f"seed={2**64 - 1}", "num_samples=2"), "seed + num_samples - 1=18446744073709551616"),
        (("prompt=" + "x" * 2048 * 100,), "characters, more than this model's limit of"),
        (("prompt=Hi", "num_samples=0"), "num_samples=0"),
        (("prompt_file=missing.txt",), "prompt file not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tiny, capsys, args, message):
    _, ckpt = tiny
    with pytest.raises(SystemExit) as exit_info:
        main([f"ckpt_path={ckpt}", *args])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and message in captured.err


def test_generating_from_a_checkpoint_file_does_not_import_lightning(tiny, tmp_path):
    """Lightning takes seconds to import, and reading a .ckpt file needs none of it."""
    args = (f"ckpt_path={tiny[1]}", f"prompt={PROMPT}", "temperature=0", "max_new_tokens=4")
    result, imported = run_plain("src.generate", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and imported == {"torch"}


@pytest.mark.slow
def test_missing_source_and_broken_checkpoint_from_the_command_line(tmp_path):
    neither = run_cli("src.generate", "prompt=Hi")
    missing = run_cli("src.generate", f"ckpt_path={tmp_path / 'nope.ckpt'}", "prompt=Hi")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"PK\x03\x04garbage")
    truncated = run_cli("src.generate", f"ckpt_path={broken}", "prompt=Hi")
    for result, message in [
        (neither, "give exactly one of hf_path"),
        (missing, "checkpoint not found"),
        (truncated, "not a readable checkpoint"),
    ]:
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and message in result.stderr


def test_unreadable_prompt_file_and_config_json_are_one_line_naming_the_file(tiny, tmp_path, capsys):
    _, ckpt = tiny
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    as_list, string_width, string_theta = tmp_path / "list", tmp_path / "string", tmp_path / "theta"
    for folder, config in [
        (as_list, [1, 2]),
        (string_width, {"model_type": "llama", "hidden_size": "64"}),
        (string_theta, {"model_type": "llama", "rope_parameters": {"rope_theta": "big"}}),
    ]:
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
    for args, message in [
        ((f"ckpt_path={ckpt}", f"prompt_file={latin1}"), "latin1.txt: not UTF-8 (byte 3); convert it"),
        (
            (f"hf_path={as_list}", "prompt=Hi"),
            "list/config.json: expected a JSON object of config fields, got a list",
        ),
        (
            (f"hf_path={string_width}", "prompt=Hi"),
            "string/config.json: hidden_size must be an integer, got '64'",
        ),
        ((f"hf_path={string_theta}", "prompt=Hi"), "rope_parameters.rope_theta must be a number, got 'big'"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        assert exit_info.value.code == 2 and captured.out == ""
        assert captured.err.count("\n") == 1 and message in captured.err, captured.err


@pytest.fixture
def start_cli(tiny):
    """Starts a generation that runs for minutes (many samples), its stderr read as it comes;
    killed when the test ends, so a test that fails never leaves it running."""
    started: list[subprocess.Popen] = []

    def start(stdout: int) -> subprocess.Popen:
        args = [f"ckpt_path={tiny[1]}", "prompt=Hi", "max_new_tokens=50", "num_samples=100000"]
        command = [sys.executable, "-m", "src.generate", *args]
        started.append(
            subprocess.Popen(command, cwd=REPO_ROOT, stdout=stdout, stderr=subprocess.PIPE, text=True)
        )
        return started[-1]

    yield start
    for process in started:
        process.kill()
        process.communicate()


@pytest.mark.slow
def test_a_closed_stdout_exits_141_quietly(start_cli):
    """As `| head -c3` does once it has its bytes: the reader is gone before the first write."""
    process = start_cli(subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 141 and "Traceback" not in err and "Exception ignored" not in err, err


@pytest.mark.slow
def test_ctrl_c_during_generation_exits_130_quietly(start_cli):
    process = start_cli(subprocess.DEVNULL)
    assert process.stderr.readline().startswith("loaded "), "generation did not start"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in err, err
