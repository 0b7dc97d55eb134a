"""The config a run trains with, checked before Lightning is imported.

A continuation (`ckpt_path=...`) reads its checkpoint's overrides back and replays them under
today's, so it is the same run with the same config; then every check that needs the config
alone runs, for a continuation as for a fresh run (src/training/config_checks.py). Lightning
takes seconds to import, and a bad value should not wait for it: nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from src.errors import UserError
from src.models.config import SmolLM2Config
from src.training import checkpoint as ckpt
from src.training.config_checks import check_run_config
from src.training.overrides import check_replay_runs_no_code, replay_overrides


@dataclass
class CheckedConfig:
    """What the run is built from (src/training/run.py:train)."""

    cfg: DictConfig
    overrides: list[str]  # a continuation's: the checkpoint's, replayed under today's
    model: SmolLM2Config
    checkpoint: dict[str, Any] | None = None  # the continued one, read without its weights

    @property
    def finished(self) -> bool:
        """A continuation of a run already at `trainer.max_steps`: nothing to train (or check)."""
        return self.checkpoint is not None and self.checkpoint["global_step"] == self.cfg.trainer.max_steps


def checked_config(cfg: DictConfig, overrides: list[str]) -> CheckedConfig:
    """`cfg` (composed from `overrides`), or a continuation's replayed config, checked; a
    UserError names the first problem."""
    if cfg.ckpt_path and cfg.init_from:
        raise UserError(
            "ckpt_path continues a run and init_from starts a new one from weights; give one of them"
        )
    checkpoint = None
    if cfg.ckpt_path:
        checkpoint = ckpt.read_checkpoint(Path(cfg.ckpt_path), weights=False)
        history = ckpt.migrate_overrides(checkpoint.get(ckpt.OVERRIDES, []))
        check_replay_runs_no_code(history, overrides, cfg.ckpt_path)
        overrides = replay_overrides(history, overrides)
        cfg = hydra.compose(config_name="train", overrides=overrides)
        check_strategy_reads(cfg.ckpt_path, cfg.trainer)
        step, max_steps = checkpoint["global_step"], cfg.trainer.max_steps
        if max_steps < step:
            raise UserError(
                f"trainer.max_steps={max_steps} is below the checkpoint's step {step}; "
                f"pass trainer.max_steps > {step} to continue"
            )
    drop_settings_of_absent_callbacks(cfg)
    absolute_tokenizer_path(cfg)
    checked = CheckedConfig(cfg, overrides, hydra.utils.instantiate(cfg.model), checkpoint)
    if checked.finished:
        return checked
    if checkpoint is not None:
        check_model_matches(checkpoint[ckpt.MODEL_CONFIG], checked.model.to_dict(), cfg.ckpt_path)
    check_run_config(cfg, checked.model)
    return checked


def absolute_tokenizer_path(cfg: DictConfig) -> None:
    """A local `data.tokenizer` folder by its absolute path: the checkpoint keeps the name for
    export, generate and the app, which may run in another folder (where a relative name would
    find nothing, or another folder of that name)."""
    name = cfg.data.get("tokenizer")
    if name and Path(name).exists():
        cfg.data.tokenizer = str(Path(name).resolve())


def drop_settings_of_absent_callbacks(cfg: DictConfig) -> None:
    """A recipe's settings for a callback the config no longer has (`experiment=smoke
    callbacks=none`, whose text_samples settings outlive the callback) are left out: without
    a `_target_` they are no callback, only values for one."""
    callbacks = cfg.get("callbacks")
    if not callbacks:
        return
    with open_dict(callbacks):
        for name in [name for name, node in callbacks.items() if not node or "_target_" not in node]:
            del callbacks[name]


def check_model_matches(saved: dict[str, Any], config: dict[str, Any], ckpt_path: str) -> None:
    diff = [
        f"{k}: {saved.get(k)} in checkpoint, {config.get(k)} now" for k in config if saved.get(k) != config[k]
    ]
    if diff:
        raise UserError(
            f"{ckpt_path} was trained with another model config ({'; '.join(diff)}); drop the model overrides"
        )


def check_strategy_reads(ckpt_path: str, trainer: DictConfig) -> None:
    """Only the sharding strategy reads a sharded folder (Lightning's others fail on a directory)."""
    strategy = OmegaConf.select(trainer, "strategy._target_", default=None) or ""
    if ckpt.is_sharded(Path(ckpt_path)) and not strategy.endswith(".FSDP2Strategy"):
        raise UserError(
            f"{ckpt_path} is a sharded checkpoint (trainer=fsdp); continue it with trainer=fsdp, "
            "on any number of devices, or python -m src.export it for other uses"
        )
