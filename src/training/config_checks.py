"""Checks of a composed training config that run before anything is built, logged or written.

Each failure is a UserError naming the key and the fix, so a typo costs one line and a
second, not a traceback after minutes of tokenization or a crash at the first checkpoint.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.data.tokenizer import load_tokenizer
from src.errors import UserError
from src.kernels import check_kernels
from src.kernels.selection import check_policy
from src.models.config import SmolLM2Config
from src.training.spike import SpikeRule

POSITIVE_INTS = (
    "trainer.max_steps",
    "trainer.accumulate_grad_batches",
    "trainer.log_every_n_steps",
    "eval_every",
    "data.batch_size",
    "data.seq_len",
)
NONFINITE_POLICIES = ("stop", "skip")


def check_positive_int(cfg: DictConfig, key: str) -> None:
    value = OmegaConf.select(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise UserError(f"{key} must be a positive integer, got {value!r}")


def check_writable(folder: Path) -> None:
    """Fail now rather than at the first checkpoint, after the compute is spent."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise UserError(
            f"cannot write to the run folder {folder} ({err.strerror}); pass a writable paths.output_dir"
        ) from None


def check_tokenizer_fits(name: str | None, vocab_size: int) -> None:
    """Token ids past the embedding table crash on CPU and trip a device assert on CUDA."""
    size = len(load_tokenizer(name))
    if size > vocab_size:
        raise UserError(
            f"the tokenizer has {size} tokens but model.vocab_size={vocab_size}; "
            f"set model.vocab_size >= {size} or use a smaller data.tokenizer"
        )


def check_spike(cfg: DictConfig) -> None:
    """A rollback needs a decided state in every checkpoint, and a data position it can move."""
    rule = SpikeRule(**cfg.spike)
    if rule.mode == "off":
        return
    if cfg.checkpoint_every % cfg.trainer.log_every_n_steps:
        raise UserError(
            f"spike.mode={rule.mode} decides at log steps, so checkpoint_every={cfg.checkpoint_every} "
            f"must be a multiple of trainer.log_every_n_steps={cfg.trainer.log_every_n_steps}; change either"
        )
    if rule.mode == "rollback" and not str(cfg.data.get("_target_")).endswith("TextFileDataModule"):
        raise UserError(
            "spike.mode=rollback needs a text-file data module (data=shakespeare); use spike.mode=warn"
        )
    strategy = OmegaConf.select(cfg.trainer, "strategy._target_", default=None) or ""
    if rule.mode == "rollback" and strategy.endswith(".FSDP2Strategy"):
        raise UserError(
            "spike.mode=rollback keeps unsharded copies and cannot run under trainer=fsdp; use warn"
        )


def check_run_config(cfg: DictConfig, model_config: SmolLM2Config) -> None:
    """Everything about the run that can be checked from the config alone."""
    for key in POSITIVE_INTS:
        check_positive_int(cfg, key)
    lr = cfg.optim.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool):
        raise UserError(f"optim.lr must be a number, got {lr!r}")
    if lr <= 0:
        raise UserError(f"optim.lr must be positive, got {float(lr)}")
    if cfg.optim.get("fused") is False:
        raise UserError(
            "optim.fused=false: AdamW must be fused (its found_inf skips a non-finite step on the device); "
            "drop the override"
        )
    if cfg.nonfinite not in NONFINITE_POLICIES:
        raise UserError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {cfg.nonfinite!r}")
    check_spike(cfg)
    check_kernels(cfg.kernels)
    check_policy(cfg.kernels_policy)
    model_config.check_context(cfg.data.seq_len, f"data.seq_len={cfg.data.seq_len}", "lower data.seq_len")
    check_tokenizer_fits(cfg.data.get("tokenizer"), model_config.vocab_size)
    check_writable(Path(cfg.paths.output_dir))
