"""Each private Lightning name in src/lightning_compat.py still exists and still does its job."""

from types import SimpleNamespace

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.strategies import ModelParallelStrategy

from src.lightning_compat import (
    AppendingExperimentWriter,
    LightningChanged,
    mark_step_saved,
    set_logging_step,
    set_mesh_sizes,
    wandb_init_args,
    wandb_run,
)
from src.tracking.csv_logger import ContinuingCSVLogger


def test_a_missing_private_name_raises_naming_the_lightning_version():
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace()))
    message = rf"_batches_that_stepped is gone in lightning {L.__version__}"
    with pytest.raises(LightningChanged, match=message):
        set_logging_step(trainer, 3)
    assert not hasattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped")  # nothing was created


def test_logging_step_is_the_one_the_fit_loop_checkpoints():
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False)
    set_logging_step(trainer, 41)
    assert trainer.fit_loop.epoch_loop.on_save_checkpoint()["_batches_that_stepped"] == 41


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
