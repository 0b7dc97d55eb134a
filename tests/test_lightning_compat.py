"""Each private Lightning name in src/lightning_compat.py still exists and still does its job."""

import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import lightning as L
import pytest
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities import load as fabric_load
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import ModelParallelStrategy

from src.lightning_compat import (
    AppendingExperimentWriter,
    LightningChanged,
    batch_progress,
    child_ranks,
    delay_kill_on_child_failure,
    is_log_step,
    log_the_last_step,
    mark_step_saved,
    note_sigterm_only,
    restore_batch_progress,
    rewind_optimizer_steps,
    set_logging_step,
    set_mesh_sizes,
    stop_after_this_batch,
    wandb_init_args,
    wandb_run,
)
from src.tracking.csv_logger import ContinuingCSVLogger
from src.training import checkpoint as ckpt


def test_a_missing_private_name_raises_naming_the_lightning_version():
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace()))
    message = rf"_batches_that_stepped is gone in lightning {L.__version__}"
    with pytest.raises(LightningChanged, match=message):
        set_logging_step(trainer, 3)
    assert not hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped")  # nothing was created


def test_lightning_names_a_sharded_checkpoints_metadata_file_as_our_reader_does():
    """src.training.checkpoint reads sharded folders without importing Lightning, by this name."""
    assert fabric_load._METADATA_FILENAME == ckpt.SHARDED_METADATA


def test_logging_step_is_the_one_the_fit_loop_checkpoints():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    set_logging_step(trainer, 41)
    assert trainer.fit_loop.epoch_loop.on_save_checkpoint()["_batches_that_stepped"] == 41


def test_lightning_logs_the_last_step_too_once_told():
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=7, log_every_n_steps=5)
    trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step.increment_by(7)
    set_logging_step(trainer, 6)  # Lightning checks step 6 + 1 against its interval
    trainer.training = True
    connector = trainer._logger_connector
    assert not connector.should_update_logs  # 7 is no multiple of 5
    log_the_last_step(trainer)
    log_the_last_step(trainer)  # a second fit of the same trainer
    assert connector.should_update_logs
    assert [step for step in range(1, 12) if is_log_step(trainer, step)] == [5, 7, 10]


def test_a_logger_connector_of_another_type_is_a_changed_lightning():
    trainer = L.Trainer(accelerator="cpu", logger=False)
    trainer._logger_connector = SimpleNamespace(should_update_logs=True)
    with pytest.raises(LightningChanged, match="Trainer._logger_connector is a SimpleNamespace"):
        log_the_last_step(trainer)


def test_rewinding_moves_the_global_step_and_both_progress_counts():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    progress = trainer.fit_loop.epoch_loop.automatic_optimization.optim_progress.optimizer.step
    progress.increment_by(12)
    rewind_optimizer_steps(trainer, 4)
    assert trainer.global_step == 8
    assert (progress.total.ready, progress.current.ready, progress.current.completed) == (8, 8, 8)


def test_batch_progress_is_what_the_fit_loop_checkpoints_and_comes_back_whole():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    loop = trainer.fit_loop.epoch_loop
    loop.batch_progress.increment_ready()
    set_logging_step(trainer, 5)
    saved = batch_progress(trainer)
    loop.batch_progress.increment_ready()  # a batch started after the copy
    set_logging_step(trainer, 6)
    restore_batch_progress(trainer, saved)
    state = loop.state_dict()
    assert state["batch_progress"]["total"]["ready"] == 1 and state["batch_progress"]["current"]["ready"] == 1
    assert loop.on_save_checkpoint()["_batches_that_stepped"] == 5


def test_mark_step_saved_sets_the_step_model_checkpoint_compares_against(tmp_path):
    callback = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=5)
    mark_step_saved(callback, 10)
    trainer = SimpleNamespace(global_step=10, fast_dev_run=False, sanity_checking=False)
    trainer.state = SimpleNamespace(fn="fit")
    assert callback._should_skip_saving_checkpoint(trainer)  # Lightning's own check now skips step 10


def test_mesh_sizes_replace_lightnings_auto_which_is_the_node_count():
    strategy = ModelParallelStrategy()
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == ("auto", "auto")
    set_mesh_sizes(strategy, data_parallel=4, tensor_parallel=1)
    # What setup_environment passes to _setup_device_mesh (tests/test_fsdp.py runs it on 2 processes).
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (4, 1)


def write_metrics(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "metrics.csv").write_text("epoch,step,train/loss\n0,1,2.5\n")


def test_lightnings_writer_still_deletes_old_metrics_so_the_workaround_is_needed(tmp_path):
    write_metrics(tmp_path)
    ExperimentWriter(log_dir=str(tmp_path))
    assert not (tmp_path / "metrics.csv").exists()


def test_appending_writer_keeps_old_metrics_and_their_columns(tmp_path):
    write_metrics(tmp_path)
    writer = AppendingExperimentWriter(log_dir=str(tmp_path))
    assert writer.metrics_keys == ["epoch", "step", "train/loss"]
    writer.log_metrics({"epoch": 0, "train/loss": 2.0}, step=2)
    writer.save()
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines == ["epoch,step,train/loss", "0,1,2.5", "0,2,2.0"]


def test_continuing_csv_logger_creates_its_writer_once(tmp_path):
    logger = ContinuingCSVLogger(save_dir=str(tmp_path), name="csv", version="")
    assert isinstance(logger.experiment, AppendingExperimentWriter)
    assert logger.experiment is logger.experiment


def test_wandb_init_args_and_run_are_readable_before_a_run_starts(tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path), mode="offline", id="abc12345")
    init = wandb_init_args(logger)
    assert (init["mode"], init["id"], init["dir"]) == ("offline", "abc12345", str(tmp_path))
    assert wandb_run(logger) is None


def test_sigterm_only_calls_the_handler_and_the_loop_no_longer_broadcasts_per_batch():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    received = []
    note_sigterm_only(trainer, received.append)
    connector = trainer._signal_connector
    connector.register_signal_handlers()  # what fit does: looks the handler up now
    try:
        signal.raise_signal(signal.SIGTERM)
    finally:
        connector.teardown()
    assert received == [signal.SIGTERM] and not trainer.received_sigterm  # no stop until agreed
    trainer.fit_loop.epoch_loop._broadcast_sigterm_tensor()  # a no-op now: no collective, no read
    stop_after_this_batch(trainer)
    assert trainer.received_sigterm  # what Lightning's loop checks after each batch


def test_child_ranks_are_the_processes_lightnings_own_launcher_started():
    trainer = L.Trainer(accelerator="cpu", strategy="ddp", devices=2, logger=False)
    launcher = trainer.strategy.launcher
    assert child_ranks(trainer) == [] and launcher.procs == []
    launcher.procs.append("rank 1")  # filled by launch(); child_ranks reads this very list
    assert child_ranks(trainer) == ["rank 1"]
    assert child_ranks(L.Trainer(accelerator="cpu", logger=False)) == []


def test_a_failed_child_kills_every_rank_only_after_the_grace(monkeypatch):
    events = []

    class Observer(_ChildProcessObserver):
        def _terminate_all(self) -> None:  # Lightning's SIGKILLs every rank and this process
            events.append("kill")

    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    failed.wait()
    observer = Observer(main_pid=os.getpid(), child_processes=[failed])
    monkeypatch.setattr(threading, "enumerate", lambda: [observer])
    monkeypatch.setattr(time, "sleep", lambda seconds: events.append(f"sleep {seconds}"))
    delay_kill_on_child_failure(30)
    assert observer._run()  # one poll of Lightning's watcher: it sees the exit code 3
    assert events == ["sleep 30", "kill"]
