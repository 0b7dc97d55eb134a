"""Loggers from config; W&B goes offline by itself when it has no credentials."""

from __future__ import annotations

import netrc
import os
import secrets
import string
from pathlib import Path

import hydra
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

WANDB_MODES = ("auto", "online", "offline", "disabled")


def new_run_id() -> str:
    """An 8-character id in W&B's alphabet; saved in checkpoints so continuations log to the same run."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str) -> str:
    """WANDB_MODE wins; `auto` is online only with an API key (so a run never hangs on login)."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested not in WANDB_MODES:
        raise UserError(f"logger.wandb.mode={requested!r}; choose one of {list(WANDB_MODES)}")
    if requested == "auto":
        return "online" if has_wandb_credentials() else "offline"
    return requested


def build_loggers(cfg: DictConfig | None, run_id: str) -> list[Logger]:
    """One logger per entry of the `logger` group; the W&B run id comes from the checkpoint."""
    loggers = []
    for name, logger_cfg in (cfg or {}).items():
        if name != "wandb":
            loggers.append(hydra.utils.instantiate(logger_cfg))
            continue
        options = OmegaConf.to_container(logger_cfg, resolve=True)
        mode = wandb_mode(options.pop("mode", "auto"))
        Path(options["save_dir"]).mkdir(parents=True, exist_ok=True)
        if mode == "offline":
            rank_zero_info(
                f"W&B: no credentials or WANDB_MODE=offline, logging offline to {options['save_dir']}/wandb; "
                "upload later with `wandb sync <that folder>/offline-run-*`"
            )
        options.update(id=run_id, resume="allow", mode=mode)
        loggers.append(hydra.utils.instantiate(options))
    return loggers
