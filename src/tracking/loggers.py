"""Loggers from config, and what every logger records about the run."""

from __future__ import annotations

import importlib.util
import secrets
import string
from typing import Any

import hydra
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from src.extras import require_extra
from src.training.plan import Plan

VENDORED_TOKENIZER = "src/assets/smollm2-tokenizer"


def new_run_id() -> str:
    """An 8-character id in W&B's alphabet; saved in checkpoints so continuations log to the same run."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def check_logger_extras(cfg: DictConfig | None) -> None:
    """A logger whose package is an optional extra fails at config time, before the model is built."""
    targets = [str(logger_cfg.get("_target_", "")) for logger_cfg in (cfg or {}).values()]
    tensorboard = any(target.endswith(".TensorBoardLogger") for target in targets)
    # Lightning writes with the full TensorBoard when it is installed, else with tensorboardX.
    if tensorboard and importlib.util.find_spec("tensorboard") is None:
        require_extra("tensorboardX", "tensorboard", "logger=tensorboard")


def build_loggers(cfg: DictConfig | None, run_id: str, continue_at: int | None = None) -> list[Logger]:
    """One logger per entry of the `logger` group; the W&B run id comes from the checkpoint.

    A continuation from a checkpoint at step `continue_at` has each logger that can (CSV, W&B)
    drop what an earlier process logged after that checkpoint, so every step is logged once.
    """
    loggers = [
        hydra.utils.instantiate(logger_cfg, **({"id": run_id} if name == "wandb" else {}))
        for name, logger_cfg in (cfg or {}).items()
    ]
    if continue_at is not None:
        for logger in loggers:
            if hasattr(logger, "continue_at"):
                logger.continue_at(continue_at)
    return loggers


def run_config(cfg: DictConfig, num_parameters: int, recipe: str, plan: Plan | None = None) -> dict[str, Any]:
    """The composed config at the top level (W&B shows `model.hidden_size`, not `config.model...`),
    plus what it does not say directly: the parameter count, the recipe applied, the tokenizer and
    the run's plan (tokens, epochs, checkpoint disk: src/training/plan.py)."""
    params = OmegaConf.to_container(cfg, resolve=True)
    params["num_parameters"] = num_parameters
    params["recipe"] = recipe
    if plan is not None:
        params["plan"] = plan.to_dict()
    params["tokenizer"] = cfg.data.get("tokenizer") or VENDORED_TOKENIZER
    return params
