"""Export to a Hugging Face folder, load it back, and reject broken folders in one line."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from src.errors import UserError
from src.models import SmolLM2, SmolLM2Config
from src.serving import load_pretrained
from tests.helpers import run_cli, write_checkpoint


@pytest.fixture(scope="module")
def exported(module_tmp_path):
    torch.manual_seed(0)
    folder = module_tmp_path
    model = SmolLM2(SmolLM2Config.from_preset("tiny")).eval()
    write_checkpoint(model, folder / "model.ckpt")
    result = run_cli("src.export", f"ckpt_path={folder / 'model.ckpt'}", f"out_dir={folder / 'hf'}")
    assert result.returncode == 0, result.stderr
    return model, folder


def test_export_loads_in_transformers_with_the_same_logits(exported):
    model, folder = exported
    hf = AutoModelForCausalLM.from_pretrained(folder / "hf", local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder / "hf", local_files_only=True)
    x = torch.tensor([tokenizer.encode("In 2024 the quick brown fox")])
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max().item() <= 1e-5
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    for name in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json"):
        assert (folder / "hf" / name).is_file()


def test_a_bfloat16_export_stores_half_the_bytes_and_loads_as_the_rounded_weights(exported, tmp_path):
    from src.export import main

    model, folder = exported
    main([f"ckpt_path={folder / 'model.ckpt'}", f"out_dir={tmp_path / 'bf16'}", "dtype=bfloat16"])
    stored = load_file(tmp_path / "bf16" / "model.safetensors")
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    size = (tmp_path / "bf16" / "model.safetensors").stat().st_size
    assert size < 0.51 * (folder / "hf" / "model.safetensors").stat().st_size
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["torch_dtype"] == config["dtype"] == "bfloat16"
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", local_files_only=True, dtype="auto")
    assert hf.dtype == torch.bfloat16
    loaded = load_pretrained(tmp_path / "bf16")  # ours reads it back in fp32: the bf16 values exactly
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
    with pytest.raises(SystemExit) as exit_:
        main([f"ckpt_path={folder / 'model.ckpt'}", f"out_dir={tmp_path / 'f16'}", "dtype=float16"])
    assert exit_.value.code == 2 and not (tmp_path / "f16").exists()


def test_round_trip_through_load_pretrained_keeps_weights_and_ties(exported):
    model, folder = exported
    loaded = load_pretrained(folder / "hf")
    assert loaded.lm_head.weight is loaded.embed.weight
    assert loaded.num_parameters() == model.num_parameters()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    from_ckpt = load_pretrained(folder / "model.ckpt")
    assert from_ckpt.lm_head.weight is from_ckpt.embed.weight


def test_generate_cli_prints_greedy_continuation(exported):
    model, folder = exported
    result = run_cli(
        "src.generate", f"hf_path={folder / 'hf'}", "prompt=In 2024", "max_new_tokens=8", "temperature=0"
    )
    assert result.returncode == 0, result.stderr
    from src.data.tokenizer import load_tokenizer
    from src.models import generate

    tokenizer = load_tokenizer()
    ids = generate(model, torch.tensor([tokenizer.encode("In 2024")]), 8, eos_id=0)[0, 6:].tolist()
    assert result.stdout == tokenizer.decode([t for t in ids if t != 0]) + "\n"


@pytest.fixture
def broken_copy(exported, tmp_path):
    _, folder = exported
    target = tmp_path / "hf"
    target.mkdir()
    for file in (folder / "hf").iterdir():
        (target / file.name).write_bytes(file.read_bytes())
    return target


def test_folder_without_config_json(broken_copy):
    (broken_copy / "config.json").unlink()
    with pytest.raises(UserError, match=r"config.json: not found"):
        load_pretrained(broken_copy)


def test_config_of_another_architecture(broken_copy):
    config = json.loads((broken_copy / "config.json").read_text())
    config["model_type"] = "gpt2"
    (broken_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"config.json: model_type is 'gpt2'"):
        load_pretrained(broken_copy)


def test_weights_with_a_missing_tensor(broken_copy):
    weights = load_file(broken_copy / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, broken_copy / "model.safetensors")
    with pytest.raises(UserError, match=r"model.safetensors: missing 1 tensor.*layers.1.mlp.up_proj"):
        load_pretrained(broken_copy)


def test_weights_with_a_misshaped_tensor(broken_copy):
    weights = load_file(broken_copy / "model.safetensors")
    weights["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    save_file(weights, broken_copy / "model.safetensors")
    with pytest.raises(UserError, match=r"model.safetensors: tensor .*k_proj.weight has shape \(64, 64\)"):
        load_pretrained(broken_copy)


@pytest.mark.slow
def test_cli_reports_bad_input_in_one_line_and_exits_non_zero(tmp_path):
    result = run_cli("src.generate", f"hf_path={tmp_path}", "prompt=hi")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "config.json: not found" in result.stderr
    truncated = tmp_path / "bad.ckpt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    result = run_cli("src.export", f"ckpt_path={truncated}", f"out_dir={tmp_path / 'out'}")
    assert result.returncode == 2 and "not a readable checkpoint" in result.stderr
