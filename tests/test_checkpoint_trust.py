"""A checkpoint cannot run code: every reader refuses a file whose unpickling would, before any of it runs.

The payload is a real checkpoint plus one object whose unpickling creates a marker file, as
a hostile file would run any command. Loaded with `weights_only=False` it would create it.
"""

from __future__ import annotations

import pathlib
from pathlib import Path

import pytest
import torch

from src.errors import UserError
from src.serving import load_pretrained
from src.training import checkpoint as ckpt
from src.training.checkpoint_io import AtomicCheckpointIO
from tests.conftest import REPO_ROOT
from tests.helpers import run_cli
from tests.training import fast_overrides, run_training, write_text

OLD_CHECKPOINT = REPO_ROOT / "tests" / "fixtures" / "tiny_step2_before_layout_move.ckpt"


class CreatesFile:
    """Unpickling this calls `Path(marker).touch()`: what a payload in a shared checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.fixture
def payload(tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with one extra entry that creates `marker` when unpickled."""
    marker = tmp_path / "marker"
    checkpoint = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)
    checkpoint["extra"] = CreatesFile(marker)
    path = tmp_path / "payload.ckpt"
    torch.save(checkpoint, path)
    return path, marker


def test_the_payload_runs_when_loaded_without_weights_only(payload):
    """The payload is real: the unrestricted loader this project no longer uses creates the marker."""
    path, marker = payload
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.is_file()


def test_our_own_checkpoints_load_with_weights_only(tmp_path):
    """No allow-list needed: an old checkpoint (loop, callback and schedule state) reads whole."""
    checkpoint = ckpt.read_checkpoint(OLD_CHECKPOINT)
    assert checkpoint["global_step"] == 2 and checkpoint["optimizer_states"]
    assert AtomicCheckpointIO().load_checkpoint(OLD_CHECKPOINT).keys() == checkpoint.keys()


def test_every_in_process_reader_refuses_the_payload_naming_its_types(payload, tmp_path):
    """read_checkpoint (export, generate, app, train), load_pretrained, Lightning's own ckpt_path
    load, and a sharded folder's meta.pt."""
    path, marker = payload
    sharded = tmp_path / "sharded.ckpt"
    sharded.mkdir()
    (sharded / ckpt.SHARDED_METADATA).write_bytes(path.read_bytes())
    readers = [
        lambda: ckpt.read_checkpoint(path),
        lambda: ckpt.read_checkpoint(path, weights=False),
        lambda: load_pretrained(path),
        lambda: AtomicCheckpointIO().load_checkpoint(path, weights_only=False),
        lambda: ckpt.read_checkpoint(sharded),
    ]
    for read in readers:
        with pytest.raises(UserError, match=r"refused: it holds .*pathlib\.(Posix)?Path") as err:
            read()
        assert "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, args",
    [
        ("src.train", ["ckpt_path={path}", "paths.root_dir={tmp}", "trainer.accelerator=cpu", "logger=csv"]),
        ("src.generate", ["ckpt_path={path}", "prompt=ROMEO:", "max_new_tokens=2"]),
        ("src.export", ["ckpt_path={path}", "out_dir={tmp}/exported"]),
    ],
)
def test_no_entry_point_runs_the_payload(payload, tmp_path, module, args):
    """Exit 2 with one `error:` line naming the refused types; the marker is never created."""
    path, marker = payload
    result = run_cli(module, *(arg.format(path=path, tmp=tmp_path) for arg in args))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error:") and "refused: it holds" in lines[-1], result.stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:]
    assert not marker.exists()
    assert not (tmp_path / "exported").exists()


def test_stored_overrides_that_would_run_code_are_replayed_only_when_given_again(tmp_path):
    """A continuation replays the checkpoint's overrides into Hydra, whose `_target_` imports and
    calls anything: a stored one is refused (nothing is instantiated) unless passed again now."""
    marker = tmp_path / "marker"
    evil = ["+callbacks.evil._target_=builtins.open", f"+callbacks.evil.file={marker}"]
    checkpoint = torch.load(OLD_CHECKPOINT, map_location="cpu", weights_only=True)
    checkpoint[ckpt.OVERRIDES] = [*checkpoint[ckpt.OVERRIDES], *evil, "hydra.searchpath=[file:///elsewhere]"]
    path = tmp_path / "overrides.ckpt"
    torch.save(checkpoint, path)
    text = write_text(tmp_path / "input.txt")
    with pytest.raises(UserError, match=r"callbacks\.evil\._target_=builtins\.open hydra\.searchpath") as err:
        run_training(fast_overrides(tmp_path, text, f"ckpt_path={path}", "trainer.max_steps=4"))
    assert "file=" not in str(err.value) and not marker.exists()


def test_a_hugging_face_folders_pytorch_model_bin_is_read_as_safely(tmp_path):
    """The legacy weights file of a Hugging Face folder: a payload is refused unread, a truncated
    file is one line, both naming the file."""
    from safetensors.torch import load_file

    from src.models import SmolLM2, SmolLM2Config
    from src.models.hf import write_hf_folder

    config = SmolLM2Config.from_preset("tiny")
    folder, marker = tmp_path / "hf", tmp_path / "marker"
    write_hf_folder(SmolLM2(config), config, folder)
    weights = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    legacy = folder / "pytorch_model.bin"
    torch.save(weights, legacy)
    assert load_pretrained(folder).config == config  # the plain legacy file loads
    torch.save({**weights, "extra": CreatesFile(marker)}, legacy)
    with pytest.raises(
        UserError, match=rf"^{legacy}: refused: it holds .*no weights file needs such objects$"
    ):
        load_pretrained(folder)
    assert not marker.exists()
    legacy.write_bytes(legacy.read_bytes()[:1000])
    with pytest.raises(UserError, match=rf"^{legacy}: not a readable weights file, it may be truncated"):
        load_pretrained(folder)
