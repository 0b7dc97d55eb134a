"""init_from=: a new run that starts from pretrained weights (a Hugging Face folder or our .ckpt)."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
import torch
import torch.nn.functional as F

from src.errors import UserError
from src.export import export_checkpoint
from src.models import SmolLM2
from src.serving.inference import read_pretrained
from src.training import checkpoint as ckpt
from tests.training import compose_train, fast_overrides, hydra_context, logged, run_training, write_text


def validation_loss(model: SmolLM2, overrides: list[str]) -> float:
    """The mean next-token loss of `model` on the batches the run's validation sees, computed directly."""
    with hydra_context():
        cfg = compose_train(overrides)
        datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("validate")
    batches = [windows for windows, _ in list(datamodule.val_dataloader())[: cfg.trainer.limit_val_batches]]
    with torch.no_grad():
        losses = [F.cross_entropy(model(b[:, :-1]).flatten(0, 1), b[:, 1:].flatten()) for b in batches]
    return float(torch.stack(losses).mean())


@pytest.fixture(scope="module")
def exported(module_tmp_path) -> Path:
    """A tiny model trained 3 steps at a high LR (far from any fresh init), exported as a HF folder."""
    tmp = module_tmp_path
    text = write_text(tmp / "text.txt")
    run_training(fast_overrides(tmp, text, "trainer.max_steps=3", "optim.lr=1e-2", "val_at_start=false"))
    export_checkpoint(tmp / "run" / "checkpoints" / "last.ckpt", tmp / "hf")
    return tmp / "hf"


def test_a_run_from_an_exported_model_starts_at_that_models_validation_loss(exported, tmp_path):
    text = write_text(tmp_path / "text.txt", seed=1)
    overrides = fast_overrides(tmp_path, text, f"init_from={exported}", "trainer.max_steps=1", "kernels=[]")
    run_training(overrides)

    pretrained = read_pretrained(exported).eval()
    expected = validation_loss(pretrained, overrides)
    assert logged(tmp_path / "run", "val/loss")[0] == pytest.approx(expected, rel=1e-5)
    torch.manual_seed(0)
    fresh = validation_loss(SmolLM2(pretrained.config).eval(), overrides)
    assert abs(fresh - expected) > 0.1  # the weights did come from the export
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 1  # a new step counter
    weights = saved["state_dict"]
    assert torch.equal(
        weights["model.embed.weight"], weights["model.lm_head.weight"]
    )  # still tied after a step
    assert not any(
        o.startswith("init_from") for o in saved[ckpt.OVERRIDES]
    )  # a continuation replays no init_from


def test_init_from_another_model_names_the_differing_fields(exported, tmp_path):
    text = write_text(tmp_path / "text.txt")
    overrides = fast_overrides(
        tmp_path, text, f"init_from={exported}", "model.num_layers=3", "model.rope_theta=10000"
    )
    with pytest.raises(
        UserError, match=r"num_layers: 2 there, 3 in model=; rope_theta: 100000.0 there, 10000"
    ):
        run_training(overrides)


def test_init_from_and_ckpt_path_together_are_refused(exported, tmp_path):
    text = write_text(tmp_path / "text.txt")
    overrides = fast_overrides(tmp_path, text, f"init_from={exported}", f"ckpt_path={tmp_path / 'x.ckpt'}")
    with pytest.raises(UserError, match="give one of them"):
        run_training(overrides)


def test_a_folder_with_another_tokenizer_is_said_with_how_to_keep_it(tmp_path):
    """SmolLM2-Instruct's folder ends with <|im_end|>: a run on the vendored tokenizer would end
    documents, and its exports, with <|endoftext|> instead."""
    from transformers import AutoTokenizer

    from src.data.tokenizer import DEFAULT_TOKENIZER
    from src.training.run import other_tokenizer_note

    same, instruct = tmp_path / "same", tmp_path / "instruct"
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_TOKENIZER)  # a copy, not load_tokenizer's shared one
    tokenizer.save_pretrained(same)
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.save_pretrained(instruct)
    assert other_tokenizer_note(str(same), None) is None
    assert other_tokenizer_note(str(tmp_path), None) is None  # weights without a tokenizer
    assert other_tokenizer_note(str(instruct), None) == (
        f"init_from={instruct} has its own tokenizer (EOS '<|im_end|>' = 2); this run's data.tokenizer "
        f"ends documents with '<|endoftext|>' = 0, and its exports carry it: pass data.tokenizer={instruct} "
        "to keep the folder's"
    )
    assert other_tokenizer_note(str(instruct), str(instruct)) is None
