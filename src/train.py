"""Train (or continue training) a SmolLM2 decoder: `python -m src.train [overrides]`.

Hydra composes `conf/train.yaml`; this file builds the objects and calls `trainer.fit`.
With `ckpt_path=...` the run's own overrides are read back from the checkpoint and
replayed under today's, so a continuation is the same run with the same config.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf, open_dict

from src.checkpoint_io import AtomicCheckpointIO
from src.errors import UserError, exit_on_user_error
from src.hardware import enable_tf32, resolve_precision
from src.lit_module import CKPT_LR_SCHEDULE, CKPT_OVERRIDES, CKPT_WANDB_RUN_ID, SmolLM2LitModule
from src.loggers import build_loggers, new_run_id, run_config
from src.lr_schedule import LRSchedule
from src.models.loading import CKPT_MODEL_CONFIG, read_lightning_checkpoint

log = logging.getLogger(__name__)


def run_dir_of(ckpt_path: str | None, default: str) -> str:
    """A continuation writes into the run folder its checkpoint lives in."""
    if ckpt_path:
        path = Path(ckpt_path).resolve()
        if path.parent.name == "checkpoints":
            return str(path.parent.parent)
    return default


def hydra_subdir(ckpt_path: str | None) -> str:
    return f".hydra/continued_{datetime.now():%Y-%m-%d_%H-%M-%S}" if ckpt_path else ".hydra"


OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)
OmegaConf.register_new_resolver("run_dir", run_dir_of, replace=True)
OmegaConf.register_new_resolver("hydra_subdir", hydra_subdir, replace=True)


def override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def replay_overrides(history: list[str], current: list[str]) -> list[str]:
    """The checkpointed run's overrides, minus the keys given again now, then today's."""
    current_keys = {override_key(o) for o in current}
    return [o for o in history if override_key(o) not in current_keys] + list(current)


def check_model_matches(saved: dict[str, Any], config: dict[str, Any], ckpt_path: str) -> None:
    diff = [
        f"{k}: {saved.get(k)} in checkpoint, {config.get(k)} now" for k in config if saved.get(k) != config[k]
    ]
    if diff:
        raise UserError(
            f"{ckpt_path} was trained with another model config ({'; '.join(diff)}); drop the model overrides"
        )


def train(cfg: DictConfig, overrides: list[str]) -> dict[str, float]:
    """Build everything from `cfg` and fit; returns the final logged metrics."""
    checkpoint = None
    if cfg.ckpt_path:
        checkpoint = read_lightning_checkpoint(Path(cfg.ckpt_path))
        overrides = replay_overrides(checkpoint.get(CKPT_OVERRIDES, []), overrides)
        cfg = hydra.compose(config_name="train", overrides=overrides)
        step, max_steps = checkpoint["global_step"], cfg.trainer.max_steps
        if max_steps == step:
            rank_zero_info(f"{cfg.ckpt_path} is already at step {step} = trainer.max_steps: nothing to do")
            return {}
        if max_steps < step:
            raise UserError(
                f"trainer.max_steps={max_steps} is below the checkpoint's step {step}; "
                f"pass trainer.max_steps > {step} to continue"
            )

    L.seed_everything(cfg.seed, workers=True)
    model_config = hydra.utils.instantiate(cfg.model)
    if checkpoint is not None:
        check_model_matches(checkpoint[CKPT_MODEL_CONFIG], model_config.to_dict(), cfg.ckpt_path)
    if cfg.data.seq_len > model_config.max_position_embeddings:
        raise UserError(
            f"data.seq_len={cfg.data.seq_len} exceeds model.max_position_embeddings="
            f"{model_config.max_position_embeddings}; lower data.seq_len"
        )

    schedule_cfg = OmegaConf.to_container(cfg.schedule, resolve=True)
    if schedule_cfg["total_steps"] is None:
        saved = (checkpoint or {}).get(CKPT_LR_SCHEDULE) or {}
        schedule_cfg["total_steps"] = saved.get("total_steps", cfg.trainer.max_steps)
    schedule = hydra.utils.instantiate(schedule_cfg)
    assert isinstance(schedule, LRSchedule)

    run_id = (checkpoint or {}).get(CKPT_WANDB_RUN_ID) or new_run_id()
    module = SmolLM2LitModule(
        model_config,
        optimizer=hydra.utils.instantiate(cfg.optim),
        schedule=schedule,
        tokenizer=cfg.data.tokenizer,
        compile=cfg.compile,
        activation_checkpointing=cfg.activation_checkpointing,
        wandb_run_id=run_id,
        cli_overrides=[o for o in overrides if override_key(o) != "ckpt_path"],
    )
    del checkpoint  # Lightning reads the file again to restore the full training state

    datamodule = hydra.utils.instantiate(cfg.data)
    loggers = build_loggers(cfg.get("logger"), run_id)
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    enable_tf32()
    trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    rank_zero_info(
        f"SmolLM2 {cfg.model.get('_target_', '')}: {module.model.num_parameters():,} parameters, "
        f"precision {cfg.trainer.precision}, run folder {cfg.paths.output_dir}"
    )
    for logger in loggers:
        logger.log_hyperparams(run_config(cfg, module.model.num_parameters()))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    train(cfg, list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
