"""Checks of single config values, which need neither torch nor the tokenizer.

src.train runs them on the composed config before importing anything heavy, so a bad number
is reported in about the time Hydra takes to compose (src/training/config_checks.py runs them
again on a continuation's replayed config, with the checks that need the model or the disk).
A value given on today's command line wins over a continuation's replayed one, so checking it
early rejects nothing the replay would have accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.errors import UserError

POSITIVE_INTS = (
    "trainer.max_steps",
    "trainer.accumulate_grad_batches",
    "trainer.log_every_n_steps",
    "trainer.num_nodes",
    "eval_every",
    "data.batch_size",
    "data.seq_len",
    "spike.window",
    "spike.min_steps",
)
# 0: no periodic save, no warmup, no loader processes, stop at the first spike
NON_NEGATIVE_INTS = (
    "checkpoint_every",
    "schedule.warmup_steps",
    "data.num_workers",
    "spike.max_rollbacks",
)
SEED_LIMIT = 2**32 - 1  # numpy's seeds are 32-bit
# The run's switches: YAML reads `maybe` or `yes` as a string, which Python would take as true.
BOOLEANS = (
    "plan",
    "compile",
    "activation_checkpointing",
    "val_at_start",
    "keep_freed_host_memory",
    "model.tie_embeddings",
)
FINITE_POSITIVE = (lambda v: 0 < v < math.inf, "a finite number > 0")
# key: (what a value must satisfy, that in words, whether null is allowed). Keys a config may lack
# (a data module or callback without them) are checked where present.
NUMBERS: dict[str, tuple[Callable[[float], bool], str, bool]] = {
    "optim.lr": (*FINITE_POSITIVE, False),
    "optim.eps": (*FINITE_POSITIVE, False),
    "optim.weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0", False),
    # clip_grad_norm_ with a negative norm flips the gradients' sign: the loss climbs.
    "trainer.gradient_clip_val": (lambda v: 0 <= v < math.inf, "a finite number >= 0", True),
    "schedule.min_lr_ratio": (lambda v: 0 <= v <= 1, "a number in [0, 1]", True),
    "schedule.decay_fraction": (lambda v: 0 <= v <= 1, "a number in [0, 1]", True),
    "spike.k": (*FINITE_POSITIVE, False),
    "data.val_fraction": (lambda v: 0 < v < 1, "a number in (0, 1)", False),
    "callbacks.throughput.peak_tflops": (*FINITE_POSITIVE, True),
}
PRECISIONS = tuple(sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "precision").glob("*.yaml")))
ACCELERATORS = ("auto", "cpu", "gpu", "cuda")
NONFINITE_POLICIES = ("stop", "skip")
WANDB_MODES = ("auto", "online", "offline", "disabled")
_ABSENT = object()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_int(
    cfg: DictConfig, key: str, minimum: int, maximum: int | None = None, nullable: bool = False
) -> None:
    """`key` holds an integer >= `minimum` (0 or 1), and <= `maximum` if given; or null if `nullable`."""
    value = OmegaConf.select(cfg, key)
    if value is None and nullable:
        return
    if not _is_int(value) or value < minimum or (maximum is not None and value > maximum):
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if maximum is not None:
            wanted = f"an integer in [{minimum}, {maximum}]"
        raise UserError(f"{key} must be {wanted}{' or null' if nullable else ''}, got {value!r}")


def check_numbers(cfg: DictConfig) -> None:
    """The NUMBERS table, and AdamW's betas: torch would refuse them only at the first step,
    with a traceback, after the step-0 validation wrote the run's records (an infinite lr
    it never refuses: the run trains to NaN)."""
    for key, (fits, wanted, nullable) in NUMBERS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT or (value is None and nullable):
            continue
        if not _is_number(value) or not fits(value):
            raise UserError(f"{key} must be {wanted}{' or null' if nullable else ''}, got {value!r}")
    betas = cfg.optim.get("betas")
    if not (
        OmegaConf.is_list(betas) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas)
    ):
        shown = OmegaConf.to_container(betas) if OmegaConf.is_list(betas) else betas
        raise UserError(f"optim.betas must be two numbers in [0, 1), as [0.9,0.95], got {shown!r}")


def check_choices(cfg: DictConfig) -> None:
    """Switches and named settings that Python or Lightning would take wrongly or fail on late:
    a string is true, an unknown precision or accelerator is a Lightning traceback."""
    for key in BOOLEANS:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
    precision = cfg.trainer.get("precision")
    if precision not in PRECISIONS:
        raise UserError(f"trainer.precision={precision!r}; choose one of {', '.join(PRECISIONS)}")
    accelerator = cfg.trainer.get("accelerator")
    if accelerator not in ACCELERATORS:
        raise UserError(f"trainer.accelerator={accelerator!r}; choose one of {', '.join(ACCELERATORS)}")
    if not OmegaConf.is_interpolation(cfg.trainer, "val_check_interval"):
        raise UserError(
            "trainer.val_check_interval follows from eval_every (in optimizer steps); "
            "drop the override and set eval_every"
        )


def check_schedule_and_validation(cfg: DictConfig) -> None:
    """The integers that may be 0 or null, the seed, the schedule's horizon, and the share of the
    validation set each validation reads: Lightning and the schedule would fail on them late,
    with a traceback, or (a negative checkpoint interval) after the model is built."""
    for key in NON_NEGATIVE_INTS:
        check_int(cfg, key, minimum=0)
    check_int(cfg, "seed", minimum=0, maximum=SEED_LIMIT)
    check_int(cfg, "schedule.total_steps", minimum=1, nullable=True)
    check_int(cfg, "tokens_per_step", minimum=1, nullable=True)
    limit = cfg.trainer.get("limit_val_batches")
    if limit is not None and not ((_is_int(limit) and limit >= 0) or (_is_number(limit) and 0 <= limit <= 1)):
        raise UserError(
            f"trainer.limit_val_batches must be a count of batches (an integer >= 0) or a fraction "
            f"in [0, 1], got {limit!r}"
        )


def check_devices(devices: object) -> None:
    """Lightning takes a count (-1 = all), a list or "0,1" of indices, or "auto"; 0 devices is no run."""
    if OmegaConf.is_list(devices):
        fits = len(devices) > 0 and all(_is_int(d) and d >= 0 for d in devices)
    elif isinstance(devices, str):
        fits = devices == "auto" or bool(re.fullmatch(r"-1|[1-9]\d*|\d+(,\d+)*,?", devices.replace(" ", "")))
    else:
        fits = _is_int(devices) and devices >= -1 and devices != 0
    if not fits:
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
    """Counts, the schedule, the optimizer's numbers, switches, precision and accelerator, devices,
    the policies, the W&B mode and the layer-health intervals."""
    for key in POSITIVE_INTS:
        check_int(cfg, key, minimum=1)
    check_schedule_and_validation(cfg)
    check_numbers(cfg)
    check_choices(cfg)
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
