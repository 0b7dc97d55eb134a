"""Checkpoint writes are atomic and finish before a Ctrl-C that arrives during them."""

import os
import signal

import pytest
import torch

from src.training.checkpoint_io import AtomicCheckpointIO


class InterruptWhilePickled:
    """Sends this process SIGINT while torch.save is in the middle of writing."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (dict, ())


def test_ctrl_c_during_a_save_is_raised_after_the_file_is_complete(tmp_path):
    path = tmp_path / "last.ckpt"
    weights = torch.arange(1000.0)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"weights": weights, "mid": InterruptWhilePickled()}, path)
    saved = torch.load(path, weights_only=False)
    assert torch.equal(saved["weights"], weights) and saved["mid"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary file left
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_run_folder_or_a_checkpoint_as_hf_path_names_what_to_pass(tmp_path):
    from src.errors import UserError
    from src.serving.inference import ModelSource, read_source
    from src.training.checkpoint import read_checkpoint

    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    torch.save({"global_step": 1}, last)
    with pytest.raises(UserError, match=rf"^{last.parents[1]} is a run folder; pass its checkpoint, {last}$"):
        read_checkpoint(tmp_path / "run")
    with pytest.raises(UserError, match=rf"^hf_path={last} is a file; .* a .ckpt is ckpt_path=$"):
        read_source(ModelSource(hf_path=str(last)))
