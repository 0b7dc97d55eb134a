"""One training run, from its checked config (src/training/checked_config.py) to `trainer.fit`.

A continuation (`ckpt_path=...`) restores the full training state from its checkpoint. With
`init_from=<Hugging Face folder | .ckpt>` a new run (new optimizer, schedule, step counter,
run folder and W&B run) starts from those weights instead of a fresh init.
"""

from __future__ import annotations

import errno
import json
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from src.callbacks.coordinated_stop import CHILD_EXIT_WAIT_S, CoordinatedStop, end_child_ranks
from src.callbacks.last_checkpoint import AGREED_STOPS
from src.data.base import WindowDataModule
from src.data.tokenizer import load_tokenizer
from src.errors import EXIT_SIGINT, UserError, find_cause, find_user_error, os_error_reason
from src.files import atomic_write
from src.kernels.probes import Workload
from src.kernels.selection import KernelRecord, choose_kernels, kept, summary
from src.models.config import SmolLM2Config
from src.serving.inference import read_pretrained
from src.tracking.loggers import build_loggers, check_logger_extras, new_run_id, run_config
from src.tracking.wandb_logger import RunWandbLogger
from src.training import checkpoint as ckpt
from src.training.checked_config import CheckedConfig
from src.training.checkpoint_io import AtomicCheckpointIO
from src.training.global_batch import process_count, resolve_global_batch
from src.training.hardware import enable_tf32, keep_freed_host_memory, resolve_precision, uses_cuda
from src.training.lit_module import SmolLM2LitModule
from src.training.lr_schedule import LRSchedule
from src.training.overrides import override_key
from src.training.plan import Plan, make_plan
from src.training.run_folder import RunLock, start_writing, takes_the_lock
from src.training.spike import rewound_in
from src.training.spike_rule import SpikeRule


def cpu_kernels(cfg: DictConfig, model_config: SmolLM2Config, continued: KernelRecord | None) -> KernelRecord:
    """The candidate `kernels` this run keeps (`kernels_policy`; src/kernels/selection.py),
    printed in one line: a continuation's on this machine are those its checkpoint kept
    (`continued`). Each rank decides alone; the first writes the timings the others read."""
    dtype = torch.bfloat16 if "bf16" in str(cfg.trainer.precision) else torch.float32
    workload = Workload(
        model_config, cfg.data.batch_size, cfg.data.seq_len, dtype, training=True, compiled=cfg.compile
    )
    on_cpu = not uses_cuda(cfg.trainer.accelerator)
    decisions = choose_kernels(
        list(cfg.kernels), workload, cfg.kernels_policy, on_cpu=on_cpu, continued=continued
    )
    rank_zero_info(summary(decisions, workload))
    return KernelRecord.of(kept(decisions), workload)


def applied_recipe(overrides: list[str]) -> str:
    """Which experiment/ file the run applied: the one named by `experiment=`, else the model's
    own (train.yaml: `optional experiment: ${model}`). Hydra keeps its choices out of `cfg`."""
    choices = hydra.compose(
        config_name="train", overrides=overrides, return_hydra_config=True
    ).hydra.runtime.choices
    name = choices.get("experiment")
    if name not in GlobalHydra.instance().config_loader().get_group_options("experiment"):
        return "none (defaults of train.yaml)"
    if any(override_key(o) == "experiment" for o in overrides):
        return f"experiment={name}"
    return f"experiment={name} (default for model={choices.model})"


def parameters_line(count: int, reference: DictConfig) -> str:
    """Our parameter count beside the one the reproduced run states (`reference`, set by the
    experiment/seed*.yaml recipes), so a decoder that cannot be the seed's says by how much."""
    return f"parameters: {count:,} ({reference.name} states {reference.params})"


def initial_weights(init_from: str, model_config: SmolLM2Config) -> dict[str, torch.Tensor]:
    """The weights a new run starts from (`init_from=`: a Hugging Face folder or our .ckpt), which
    must be those of `model=`. `init_std` is left out: it says how fresh weights are drawn."""
    model = read_pretrained(init_from)
    saved, config = model.config.to_dict(), model_config.to_dict()
    diff = [
        f"{k}: {saved[k]} there, {config[k]} in model="
        for k in config
        if k != "init_std" and saved[k] != config[k]
    ]
    if diff:
        raise UserError(
            f"init_from={init_from} holds another model ({'; '.join(diff)}); "
            "choose the model= preset (or model.* overrides) that matches it"
        )
    return model.state_dict()


def other_tokenizer_note(init_from: str, tokenizer: str | None) -> str | None:
    """A Hugging Face folder whose own tokenizer is not the run's `data.tokenizer` (SmolLM2-Instruct
    ends with `<|im_end|>`): the run ends its documents with the run's EOS, and its exports
    carry that tokenizer. Allowed (the vocabularies may agree), and said."""
    folder = Path(init_from)
    if not (folder / "tokenizer_config.json").is_file() and not (folder / "tokenizer.json").is_file():
        return None
    theirs, ours = load_tokenizer(str(folder)), load_tokenizer(tokenizer)
    same_vocabulary = theirs.get_vocab() == ours.get_vocab()
    if same_vocabulary and theirs.eos_token_id == ours.eos_token_id:
        return None
    vocab = "" if same_vocabulary else "another vocabulary, "
    return (
        f"init_from={init_from} has its own tokenizer ({vocab}EOS {theirs.eos_token!r} = "
        f"{theirs.eos_token_id}); this run's data.tokenizer ends documents with {ours.eos_token!r} = "
        f"{ours.eos_token_id}, and its exports carry it: pass data.tokenizer={init_from} to keep the folder's"
    )


def other_data_note(checkpoint: dict[str, Any], datamodule: L.LightningDataModule) -> str | None:
    """Lightning restores a data position only into the kind of DataModule that saved it: a
    continuation on another kind (a text file after a stream: a new stage of training) reads
    its data from the beginning. Allowed, and said."""
    here = type(datamodule).__qualname__
    kinds = [kind.__qualname__ for kind in WindowDataModule.__subclasses__()]
    saved = [kind for kind in kinds if kind in checkpoint]
    if here in checkpoint or not saved:
        return None
    return (
        f"the checkpoint's data position is in {saved[0]} data; this run reads its {here} data "
        "from the beginning"
    )


def train(checked: CheckedConfig, record: dict[str, str] | None = None) -> dict[str, float]:
    """Build everything from the checked config and fit; returns the final logged metrics.
    `record` (Hydra's `.hydra/` files, `launch_record`) is written into the run folder once the
    run holds it."""
    record = record or {}
    cfg, overrides, checkpoint = checked.cfg, checked.overrides, checked.checkpoint
    model_config = checked.model
    if checked.finished:
        step = checkpoint["global_step"]
        rank_zero_info(f"{cfg.ckpt_path} is already at step {step} = trainer.max_steps: nothing to do")
        return {}
    initial = initial_weights(cfg.init_from, model_config) if cfg.init_from else None
    if cfg.init_from and (note := other_tokenizer_note(cfg.init_from, cfg.data.get("tokenizer"))):
        rank_zero_warn(note)
    check_logger_extras(cfg.get("logger"))
    global_batch = resolve_global_batch(cfg, {override_key(o) for o in overrides})

    schedule_cfg = OmegaConf.to_container(cfg.schedule, resolve=True)
    if schedule_cfg["total_steps"] is None:
        saved = (checkpoint or {}).get(ckpt.LR_SCHEDULE) or {}
        schedule_cfg["total_steps"] = saved.get("total_steps", cfg.trainer.max_steps)
    schedule = hydra.utils.instantiate(schedule_cfg)
    assert isinstance(schedule, LRSchedule)
    if schedule.warmup_steps > schedule.total_steps:  # a short trial run: allowed, but say so
        rank_zero_warn(
            f"schedule.warmup_steps={schedule.warmup_steps} exceeds the schedule's {schedule.total_steps} "
            "steps: the LR never reaches optim.lr in them (lower schedule.warmup_steps if that is not meant)"
        )

    datamodule = hydra.utils.instantiate(cfg.data)
    if checkpoint is not None and (note := other_data_note(checkpoint, datamodule)):
        rank_zero_warn(note)
    with open_dict(cfg):
        cfg.trainer.precision = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    recipe = applied_recipe(overrides)  # printed once the config has passed every check
    rank_zero_info(f"recipe: {recipe}")
    if cfg.get("reference"):
        rank_zero_info(parameters_line(model_config.num_parameters(), cfg.reference))
    rank_zero_info(f"global batch: {global_batch}")
    start_step = checkpoint["global_step"] if checkpoint else 0
    start_tokens = ckpt.tokens_seen(checkpoint, global_batch.tokens) if checkpoint else 0
    # From here on the run writes into its folder: one run at a time (global rank 0 locks it, the
    # other ranks write into the folder it holds).
    folder = Path(cfg.paths.output_dir)
    lock = RunLock(folder, continuing=bool(cfg.ckpt_path))
    if cfg.plan:
        if takes_the_lock():
            preflight_plan(
                cfg, model_config, global_batch.tokens, schedule, datamodule, start_step, start_tokens
            )
            # A fresh folder keeps the planned config and the plan (train.log); a continued run's
            # records and a live run's folder are left as they are: the plan is only printed.
            if not cfg.ckpt_path and lock.try_acquire():
                try:
                    start_writing(folder, record)
                finally:
                    lock.release()
        return {}
    run_id = (checkpoint or {}).get(ckpt.WANDB_RUN_ID) or new_run_id()
    continue_at = None if checkpoint is None else start_step
    # The loggers' steps count the steps loss-spike rollbacks undid (src/training/spike.py).
    rewound = rewound_in((checkpoint or {}).get(ckpt.SPIKE))
    saved_kernels = (checkpoint or {}).get(ckpt.CPU_KERNELS)  # absent in checkpoints before it was stored
    del checkpoint  # Lightning reads the file again to restore the full training state
    with lock if takes_the_lock() else nullcontext():
        start_writing(folder, record)
        return fit(
            cfg,
            overrides,
            model_config,
            schedule,
            datamodule,
            run_id=run_id,
            recipe=recipe,
            continue_at=continue_at,
            rewound_steps=rewound,
            tokens_per_step=global_batch.tokens,
            start_tokens=start_tokens,
            initial=initial,
            continued_kernels=KernelRecord.from_dict(saved_kernels) if saved_kernels else None,
        )


def preflight_plan(
    cfg: DictConfig,
    model_config: SmolLM2Config,
    tokens_per_step: int,
    schedule: LRSchedule,
    datamodule: L.LightningDataModule,
    start_step: int | None,
    start_tokens: int,
) -> Plan:
    """The run's plan, printed before anything is trained (README: Train); a continuation's from
    `start_step`, the tokens its steps trained on `start_tokens`."""
    start_step = start_step or 0
    plan = make_plan(
        cfg,
        model_config.num_parameters(),
        tokens_per_step,
        schedule(start_step),
        datamodule.data_size(),
        start_step,
        start_tokens,
        starts_from=cfg.get("init_from"),
    )
    rank_zero_info(plan.table())
    return plan


def fit(
    cfg: DictConfig,
    overrides: list[str],
    model_config: SmolLM2Config,
    schedule: LRSchedule,
    datamodule: L.LightningDataModule,
    *,
    run_id: str,
    recipe: str,
    continue_at: int | None = None,
    rewound_steps: int = 0,
    tokens_per_step: int,
    start_tokens: int = 0,
    initial: dict[str, torch.Tensor] | None = None,
    continued_kernels: KernelRecord | None = None,
) -> dict[str, float]:
    """Build the module and trainer from the checked config, and train (from the checkpoint's
    step `continue_at`, when continuing, whose steps trained on `start_tokens` and whose
    rollbacks undid `rewound_steps` (the loggers count them), with the CPU
    kernels it kept, `continued_kernels`; from `initial` weights when given: same keys, so a tied
    head stays the embedding).

    From here on SIGTERM, like Ctrl-C, ends the run with its exit code in every phase, tokenizing
    included (README: Reliability); a stop outside a trainer call is reported here.
    """
    coordinated_stop = CoordinatedStop(  # not optional
        every_n_steps=cfg.trainer.log_every_n_steps, processes=process_count(cfg.trainer)
    )
    trainer: L.Trainer | None = None
    loggers: list = []
    success = False
    try:
        with coordinated_stop.listening():
            L.seed_everything(cfg.seed, workers=True)
            module = SmolLM2LitModule(
                model_config,
                optimizer=hydra.utils.instantiate(cfg.optim),
                schedule=schedule,
                tokens_per_step=tokens_per_step,
                tokenizer=cfg.data.tokenizer,
                compile=cfg.compile,
                activation_checkpointing=cfg.activation_checkpointing,
                kernels=cpu_kernels(cfg, model_config, continued_kernels),
                wandb_run_id=run_id,
                # What a continuation replays: not where this run came from, the checkpoint holds the weights.
                cli_overrides=[o for o in overrides if override_key(o) not in ("ckpt_path", "init_from")],
                nonfinite=cfg.nonfinite,
                spike=SpikeRule(**cfg.spike),
            )
            if initial is not None:
                module.model.load_state_dict(initial)
            callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
            plan = None
            if takes_the_lock():  # one rank counts the data (the first run of a file tokenizes it)
                # Before the loggers, which set a continuation's later rows aside: data that
                # cannot make the run (a text too short) stops it with the run's records untouched.
                plan = preflight_plan(
                    cfg, model_config, tokens_per_step, schedule, datamodule, continue_at, start_tokens
                )
            logged_at = None if continue_at is None else continue_at + rewound_steps
            loggers = build_loggers(cfg.get("logger"), run_id, logged_at)
            if plan is not None:
                plan_file = Path(cfg.paths.output_dir) / "plan.json"
                with atomic_write(plan_file) as f:  # a continuation's plan replaces the last one whole
                    f.write(json.dumps(plan.to_dict(), indent=2) + "\n")
            enable_tf32()
            if cfg.keep_freed_host_memory and not uses_cuda(cfg.trainer.accelerator):
                keep_freed_host_memory()
            trainer = hydra.utils.instantiate(
                cfg.trainer,
                callbacks=[*callbacks, coordinated_stop],
                logger=loggers or False,
                plugins=[AtomicCheckpointIO()],
                # The DataModules split their data over ranks themselves; Lightning's sampler would
                # pad the validation windows with repeats, which would count (src/data/windows.py).
                use_distributed_sampler=False,
            )
            rank_zero_info(
                f"SmolLM2 {cfg.model.get('_target_', '')}: {module.model.num_parameters():,} parameters, "
                f"precision {cfg.trainer.precision}, run folder {cfg.paths.output_dir}"
            )
            for logger in loggers:
                logger.log_hyperparams(run_config(cfg, module.model.num_parameters(), recipe, plan))
            if cfg.val_at_start and not cfg.ckpt_path:
                trainer.validate(module, datamodule=datamodule, verbose=False)  # the curve's step-0 point
            trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        success = True
        end_child_ranks(trainer, CHILD_EXIT_WAIT_S)  # rank 0 exits last: the others die with it
    except (SystemExit, KeyboardInterrupt) as stop:
        code = stop_code(stop, trainer, coordinated_stop)
        if code is None:
            raise
        if trainer is None or not trainer.interrupted:  # inside a trainer call LastCheckpoint reports
            resume = f"; continue with ckpt_path={cfg.ckpt_path}" if cfg.ckpt_path else ""
            name = signal.Signals(code - 128).name
            rank_zero_info(f"{name} before training started: nothing saved{resume}")
        if isinstance(stop, SIGTERMException) and trainer is not None:  # agreed: the others exit alike
            others = end_child_ranks(trainer, CHILD_EXIT_WAIT_S)
            if any(other != code for other in others):
                print(f"error: the other ranks exited with {others}, not {code}", file=sys.stderr)
                sys.exit(1)
        sys.exit(code)  # a Ctrl-C not agreed on: Lightning has killed the other ranks
    except BaseException as err:
        # Ranks that stopped together (non-finite gradients) exit by themselves; others may wait
        # for this rank in a collective that never ends.
        if trainer is not None:
            end_child_ranks(trainer, CHILD_EXIT_WAIT_S if isinstance(err, AGREED_STOPS) else 0)
        check_disk_full(err)
        raise
    finally:
        for logger in loggers:
            if isinstance(logger, RunWandbLogger):
                logger.finish(success)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def check_disk_full(err: BaseException) -> None:
    """A full disk (or quota) under any file the run writes (metrics, samples, plan) is one line
    naming the file; LastCheckpoint has already said what last.ckpt holds and how to continue."""
    cause = find_cause(err, OSError)
    if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT) and find_user_error(err) is None:
        raise UserError(
            f"cannot write {cause.filename or 'a file of the run'} ({os_error_reason(cause)}); "
            "make room, then continue from last.ckpt"
        ) from err


def stop_code(stop: BaseException, trainer: L.Trainer | None, stopper: CoordinatedStop) -> int | None:
    """The exit code for a stop by SIGTERM or Ctrl-C (None for any other exit).

    Lightning turns a Ctrl-C inside a trainer call into `sys.exit(1)` (after killing the other
    ranks: not agreed); outside one it is still a KeyboardInterrupt.
    """
    if isinstance(stop, SIGTERMException):
        return stopper.exit_code()  # SIGTERM, or a Ctrl-C every rank agreed on
    if isinstance(stop, KeyboardInterrupt) or (trainer is not None and trainer.interrupted):
        return EXIT_SIGINT
    return None


def check_not_a_multiprocess_sweep(mode: RunMode, trainer: DictConfig) -> None:
    """Lightning starts the other ranks by re-running the command line: under `-m` each would
    start the whole sweep again."""
    processes = process_count(trainer)
    if mode == RunMode.MULTIRUN and processes > 1:
        raise UserError(
            f"a -m sweep cannot run {processes} processes per job (each rank would restart "
            "the sweep); sweep with trainer.devices=1, or launch each multi-device run as its own command"
        )
