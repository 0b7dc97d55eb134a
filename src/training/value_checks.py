"""Checks of single config values, which need neither torch nor the tokenizer.

src.train runs them on the composed config before importing anything heavy, so a bad number
is reported in about the time Hydra takes to compose (src/training/config_checks.py runs them
again on a continuation's replayed config, with the checks that need the model or the disk).
A value given on today's command line wins over a continuation's replayed one, so checking it
early rejects nothing the replay would have accepted.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

POSITIVE_INTS = (
    "trainer.max_steps",
    "trainer.accumulate_grad_batches",
    "trainer.log_every_n_steps",
    "eval_every",
    "data.batch_size",
    "data.seq_len",
)
NON_NEGATIVE_INTS = ("checkpoint_every", "schedule.warmup_steps", "seed")  # 0: no periodic save, no warmup
NONFINITE_POLICIES = ("stop", "skip")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(cfg: DictConfig, key: str, minimum: int) -> None:
    """`key` holds an integer >= `minimum` (0 or 1)."""
    value = OmegaConf.select(cfg, key)
    if not _is_int(value) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise UserError(f"{key} must be {wanted}, got {value!r}")


def check_schedule_and_validation(cfg: DictConfig) -> None:
    """The integers that may be 0, the schedule's horizon and fractions, and the share of the
    validation set each validation reads: Lightning and the schedule would fail on them late,
    with a traceback, or (a negative checkpoint interval) after the model is built."""
    for key in NON_NEGATIVE_INTS:
        check_int(cfg, key, minimum=0)
    total = OmegaConf.select(cfg, "schedule.total_steps")
    if total is not None and (not _is_int(total) or total <= 0):
        raise UserError(f"schedule.total_steps must be a positive integer or null, got {total!r}")
    for key in ("schedule.min_lr_ratio", "schedule.decay_fraction"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (not _is_number(value) or not 0 <= value <= 1):
            raise UserError(f"{key} must be a number in [0, 1], got {value!r}")
    limit = cfg.trainer.get("limit_val_batches")
    if limit is not None and not ((_is_int(limit) and limit >= 0) or (_is_number(limit) and 0 <= limit <= 1)):
        raise UserError(
            f"trainer.limit_val_batches must be a count of batches (an integer >= 0) or a fraction "
            f"in [0, 1], got {limit!r}"
        )


def check_devices(devices: object) -> None:
    """Lightning takes a count (-1 = all), a list or "0,1" of indices, or "auto"; 0 devices is no run."""
    if isinstance(devices, bool) or (isinstance(devices, int) and devices < -1) or devices in (0, "0"):
        raise UserError(
            f"trainer.devices must be a positive count, -1 (all), a list of indices or auto, got {devices!r}"
        )


def health_interval(every_n_steps: int | None, histogram_every_n_steps: int, log_every: int) -> int:
    """The layer-health interval (src/callbacks/layer_health.py; default: the log interval), which
    must fall on log steps, as the histograms' must fall on it."""
    every = every_n_steps or log_every
    if log_every == 0 or every % log_every:
        raise UserError(
            f"callbacks.layer_health.every_n_steps={every_n_steps} is not a multiple of "
            f"trainer.log_every_n_steps={log_every}: its values would never be logged; pick a multiple"
        )
    if histogram_every_n_steps % every:
        raise UserError(
            f"callbacks.layer_health.histogram_every_n_steps={histogram_every_n_steps} is not a "
            f"multiple of the health interval ({every} steps); pick a multiple, or 0 for none"
        )
    return every


def check_wandb_mode(mode: object) -> None:
    """Also where WANDB_MODE overrides it: a typo in the config is one all the same."""
    if mode not in WANDB_MODES:
        raise UserError(f"logger.wandb.mode={mode!r}; choose one of {list(WANDB_MODES)}")


def check_values(cfg: DictConfig) -> None:
    """Counts, the schedule, the learning rate, weight decay, devices, the policies, the W&B mode
    and the layer-health intervals."""
    for key in POSITIVE_INTS:
        check_int(cfg, key, minimum=1)
    check_schedule_and_validation(cfg)
    lr = cfg.optim.get("lr")
    if not _is_number(lr):
        raise UserError(f"optim.lr must be a number, got {lr!r}")
    if lr <= 0:
        raise UserError(f"optim.lr must be positive, got {float(lr)}")
    weight_decay = cfg.optim.get("weight_decay", 0.0)
    if not _is_number(weight_decay) or not weight_decay >= 0:
        raise UserError(f"optim.weight_decay must be a number >= 0, got {weight_decay!r}")
    check_devices(cfg.trainer.get("devices", 1))
    if cfg.optim.get("fused") is False:
        raise UserError(
            "optim.fused=false: AdamW must be fused (its found_inf skips a non-finite step on the device); "
            "drop the override"
        )
    if cfg.nonfinite not in NONFINITE_POLICIES:
        raise UserError(f"nonfinite must be one of {NONFINITE_POLICIES}, got {cfg.nonfinite!r}")
    if OmegaConf.select(cfg, "logger.wandb") is not None:
        check_wandb_mode(OmegaConf.select(cfg, "logger.wandb.mode"))
    if (health := OmegaConf.select(cfg, "callbacks.layer_health")) is not None:
        log_every = cfg.trainer.log_every_n_steps
        health_interval(health.get("every_n_steps"), health.get("histogram_every_n_steps", 0), log_every)
