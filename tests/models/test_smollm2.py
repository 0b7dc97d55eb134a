import dataclasses
import math

import pytest
import torch
from omegaconf import OmegaConf

from src.errors import UserError
from src.models import SmolLM2, SmolLM2Config
from tests.conftest import REPO_ROOT

MODEL_CONF = REPO_ROOT / "src" / "conf" / "model"


def build_on_meta(preset: str) -> SmolLM2:
    with torch.device("meta"):
        return SmolLM2(SmolLM2Config.from_preset(preset))


def test_smollm2_135m_has_exactly_the_released_parameter_count():
    assert build_on_meta("smollm2_135m").num_parameters() == 134_515_008


@pytest.mark.parametrize(
    ("preset", "expected"), [("smollm2_360m", 361_821_120), ("smollm2_1.7b", 1_711_376_384)]
)
def test_larger_presets_match_released_parameter_counts(preset, expected):
    assert build_on_meta(preset).num_parameters() == expected


def test_lm_head_is_the_embedding_tensor():
    model = SmolLM2(SmolLM2Config.from_preset("tiny"))
    assert model.lm_head.weight is model.embed.weight
    names = [name for name, _ in model.named_parameters()]
    assert "lm_head.weight" not in names and "embed.weight" in names


def tiny(**changes) -> SmolLM2Config:
    """The tiny preset with some fields changed (init_std derived again from the new width)."""
    return dataclasses.replace(SmolLM2Config.from_preset("tiny"), **{"init_std": None, **changes})


@pytest.mark.parametrize("path", sorted(MODEL_CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_yaml_keys_are_exactly_the_config_fields(path):
    yaml = OmegaConf.to_container(OmegaConf.load(path))
    assert yaml.pop("_target_") == "src.models.SmolLM2Config"
    assert set(yaml) == {f.name for f in dataclasses.fields(SmolLM2Config)}
    assert SmolLM2Config.from_preset(path.stem) == SmolLM2Config(**yaml)


def test_presets_are_the_model_yaml_files():
    assert sorted(p.stem for p in MODEL_CONF.glob("*.yaml")) == [
        "smollm2_1.7b",
        "smollm2_135m",
        "smollm2_360m",
        "tiny",
    ]
    assert SmolLM2Config.from_preset("smollm2_1.7b").rope_theta == 130000.0
    assert SmolLM2Config.from_preset("tiny").rms_norm_eps == 1e-5  # a float, as Hydra reads `1e-05`


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(hidden_size=100, num_heads=3), "not divisible by model.num_heads"),
        (dict(num_heads=4, num_kv_heads=3), "not divisible by model.num_kv_heads"),
        (dict(num_layers=0), "model.num_layers must be a positive integer, got 0"),
        (dict(vocab_size="abc"), "model.vocab_size must be a positive integer, got 'abc'"),
        (dict(init_std=-1), "model.init_std must be a finite number > 0, got -1"),
        (dict(rope_theta="big"), "model.rope_theta must be a finite number > 0, got 'big'"),
        (dict(hidden_size=12, num_heads=4, num_kv_heads=2), "must be even"),
    ],
)
def test_impossible_configs_are_rejected_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as info:
        tiny(**overrides)
    assert "\n" not in str(info.value)


def test_unknown_preset_and_keys_name_the_choices():
    with pytest.raises(UserError, match=r"unknown model preset 'gpt5'; choose one of \['smollm2_1.7b', "):
        SmolLM2Config.from_preset("gpt5")
    with pytest.raises(UserError, match="unknown model config keys"):
        SmolLM2Config.from_dict({"hidden": 3})


def test_init_follows_smollm2():
    config = tiny(hidden_size=256, intermediate_size=512, num_layers=4)
    model = SmolLM2(config)
    std = 1 / math.sqrt(256)
    assert config.init_std == pytest.approx(std)
    assert model.embed.weight.std().item() == pytest.approx(std, rel=0.02)
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(std, rel=0.05)
    out_std = std / math.sqrt(2 * 4)
    assert model.blocks[1].attn.o_proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert model.blocks[1].mlp.down_proj.weight.std().item() == pytest.approx(out_std, rel=0.05)
    assert torch.equal(model.blocks[0].attn_norm.weight, torch.ones(256))


def test_rope_tables_are_not_saved():
    model = SmolLM2(SmolLM2Config.from_preset("tiny"))
    assert not any("rope" in key for key in model.state_dict())
