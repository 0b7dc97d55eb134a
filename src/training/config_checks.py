"""Checks of a composed training config that run before anything is built, logged or written.

Each failure is a UserError naming the key and the fix, so a typo costs one line and seconds
(src.train checks before Lightning is imported), not a traceback after minutes of
tokenization or a crash at the first checkpoint. Nothing here may import Lightning.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from src.data.text_file import check_text_file
from src.data.tokenizer import load_tokenizer
from src.errors import UserError
from src.evaluation.tasks import check_distinct_names, check_task
from src.files import probe_writable
from src.kernels import check_kernels
from src.kernels.selection import check_policy
from src.models.config import SmolLM2Config
from src.serving.inference import Sampling
from src.training.spike_rule import SpikeRule
from src.training.value_checks import check_int, check_values


def check_writable(folder: Path, what: str = "the run folder") -> None:
    """Fail now rather than at the first checkpoint, after the compute is spent. A folder not
    made yet is left unmade (a run refused later writes nothing)."""
    try:
        probe_writable(folder)
    except OSError as err:
        raise UserError(
            f"cannot write to {what} {folder} ({err.strerror}); "
            "make it writable or pass another paths.output_dir"
        ) from None


def check_file_writable(path: Path) -> None:
    """A file the run will create or append to: its folder is checked apart, the file here.
    A symlink to a folder is trainer=fsdp's last.ckpt (a sharded checkpoint), swapped, not written."""
    if path.is_dir() and not path.is_symlink():
        raise UserError(f"{path} is a folder, where the run writes a file; move or remove it")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write to {path} (read-only); make it writable or move it away")


def written_paths(cfg: DictConfig) -> tuple[list[Path], list[Path]]:
    """The folders and files the run writes, from its config: checkpoints, samples, logs."""
    folders, files = [Path(cfg.paths.output_dir)], []
    for callback in (cfg.get("callbacks") or {}).values():
        if callback.get("dirpath"):
            folders.append(Path(callback.dirpath))
            if callback.get("_target_", "").endswith(".LastCheckpoint"):
                files.append(Path(callback.dirpath) / callback.get("filename", "last.ckpt"))
        if callback.get("out_file"):
            files.append(Path(callback.out_file))
            folders.append(Path(callback.out_file).parent)
    for logger in (cfg.get("logger") or {}).values():
        if logger.get("save_dir"):
            folders.append(Path(logger.save_dir) / (logger.get("name") or ""))
    return list(dict.fromkeys(folders)), files


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


def check_callbacks(cfg: DictConfig) -> None:
    """Text samples' settings as src.generate checks them, and downstream tasks as src.evaluate
    loads them (short of the hub): the callbacks meet them only once the step-0 validation has
    written the run's records."""
    callbacks = cfg.get("callbacks") or {}
    if (samples := callbacks.get("text_samples")) is not None:
        check_int(cfg, "callbacks.text_samples.every_n_steps", minimum=0)
        keys = ("max_new_tokens", "temperature", "top_k", "top_p", "seed")
        values = {key: samples.get(key) for key in keys}
        try:
            Sampling(**values)
        except UserError as err:
            raise UserError(f"callbacks.text_samples.{err}") from None
        except TypeError:  # a string where Sampling compares numbers
            raise UserError(
                f"callbacks.text_samples: {', '.join(keys)} must be numbers (top_k, top_p, seed: or null), "
                f"got {values}"
            ) from None
    if (downstream := callbacks.get("downstream_eval")) is not None:
        tasks = downstream.get("tasks")
        if not OmegaConf.is_list(tasks) or not all(isinstance(spec, str) for spec in tasks):
            raise UserError(
                f"callbacks.downstream_eval.tasks must be a list of task names, as [hellaswag,arc_easy], "
                f"got {tasks!r}"
            )
        try:
            check_distinct_names(list(tasks))
            for spec in tasks:
                check_task(spec)
        except UserError as err:
            raise UserError(f"callbacks.downstream_eval.tasks: {err}") from None


def check_run_config(cfg: DictConfig, model_config: SmolLM2Config) -> None:
    """Everything about the run that can be checked from the config alone."""
    check_values(cfg)
    check_spike(cfg)
    check_callbacks(cfg)
    check_kernels(cfg.kernels)
    check_policy(cfg.kernels_policy)
    model_config.check_context(cfg.data.seq_len, f"data.seq_len={cfg.data.seq_len}", "lower data.seq_len")
    check_tokenizer_fits(cfg.data.get("tokenizer"), model_config.vocab_size)
    if cfg.data.get("_target_", "").endswith(".TextFileDataModule") and cfg.data.get("path") is not None:
        check_text_file(Path(cfg.data.path))  # before the run folder is written to; the rest on reading
    folders, files = written_paths(cfg)
    check_writable(folders[0])
    for folder in folders[1:]:
        check_writable(folder, "the folder")
    for path in files:
        check_file_writable(path)
