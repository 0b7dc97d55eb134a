"""Export never destroys: a non-empty out_dir only with overwrite=true, replaced whole, and a
failure at any point leaves the old folder as it was (or nothing) and no hidden folder beside."""

import errno
import os
from pathlib import Path

import pytest
import safetensors.torch
import torch
from safetensors import SafetensorError

from src import export
from src.errors import UserError
from src.models import SmolLM2
from src.serving import load_pretrained
from tests.helpers import run_cli, tiny_checkpoint

FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"}


@pytest.fixture(scope="module")
def checkpoint(module_tmp_path) -> tuple[SmolLM2, Path]:
    path = module_tmp_path / "model.ckpt"
    return tiny_checkpoint(path), path


@pytest.fixture
def released(tmp_path) -> Path:
    """A folder someone cares about: its weights and a file of their own."""
    folder = tmp_path / "released"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"538 MB of released weights")
    (folder / "notes.txt").write_text("mine\n")
    return folder


def contents(folder: Path) -> dict[str, bytes]:
    return {file.name: file.read_bytes() for file in folder.iterdir()}


def test_export_creates_missing_parents_and_leaves_nothing_beside(checkpoint, tmp_path):
    model, path = checkpoint
    out = tmp_path / "a" / "b" / "hf"
    export.export_checkpoint(path, out)
    assert FILES <= set(os.listdir(out))
    assert os.listdir(out.parent) == ["hf"]
    assert torch.equal(load_pretrained(out).embed.weight, model.embed.weight)


def test_without_out_dir_a_run_exports_under_outputs_by_run_and_step(tmp_path, monkeypatch, capsys):
    path = tmp_path / "logs" / "train" / "runs" / "myrun" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    tiny_checkpoint(path)
    torch.save({**torch.load(path, weights_only=True), "global_step": 7}, path)
    monkeypatch.chdir(tmp_path)
    export.main([f"ckpt_path={path}"])
    out = tmp_path / "outputs" / "export" / "myrun-step7"
    assert FILES <= set(os.listdir(out))
    assert capsys.readouterr().err == f"wrote {out}\n"


def test_an_empty_out_dir_is_filled_without_overwrite(checkpoint, tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    export.export_checkpoint(checkpoint[1], out)
    assert FILES <= set(os.listdir(out)) and os.listdir(tmp_path) == ["hf"]


def test_a_non_empty_out_dir_is_refused_and_left_as_it_was(checkpoint, released):
    before = contents(released)
    with pytest.raises(UserError, match=r"is not empty; add overwrite=true to replace it whole"):
        export.export_checkpoint(checkpoint[1], released)
    assert contents(released) == before


def test_overwrite_replaces_the_folder_whole(checkpoint, released):
    model, path = checkpoint
    export.export_checkpoint(path, released, overwrite=True)
    assert "notes.txt" not in os.listdir(released) and FILES <= set(os.listdir(released))
    assert os.listdir(released.parent) == ["released"]
    loaded = load_pretrained(released)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def full_disk_in_safetensors(monkeypatch):
    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, "No space left on device" })')

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)


def full_disk_in_config_json(monkeypatch):
    write_text = Path.write_text

    def half_written(self, data, *args, **kwargs):
        write_text(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_text", half_written)


def ctrl_c_in_tokenizer(monkeypatch):
    def interrupted(self, folder, *args, **kwargs):
        (Path(folder) / "tokenizer.json").write_text('{"trunc')
        raise KeyboardInterrupt

    tokenizer_type = type(export.load_tokenizer(None))
    monkeypatch.setattr(tokenizer_type, "save_pretrained", interrupted)


@pytest.mark.parametrize(
    ("fail", "raised", "message"),
    [
        (full_disk_in_safetensors, UserError, r"cannot write out_dir=.*No space left.*as it was before"),
        (full_disk_in_config_json, UserError, r"ENOSPC: No space left on device: .*\.tmp-.*config.json"),
        (ctrl_c_in_tokenizer, KeyboardInterrupt, None),
    ],
)
def test_a_failure_mid_write_leaves_the_old_folder_and_no_temp_folder(
    checkpoint, released, monkeypatch, fail, raised, message
):
    before = contents(released)
    fail(monkeypatch)
    with pytest.raises(raised, match=message):
        export.export_checkpoint(checkpoint[1], released, overwrite=True)
    assert contents(released) == before
    assert os.listdir(released.parent) == ["released"]


def test_a_failure_mid_write_into_a_new_folder_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    full_disk_in_safetensors(monkeypatch)
    with pytest.raises(UserError, match="No space left"):
        export.export_checkpoint(checkpoint[1], tmp_path / "hf")
    assert os.listdir(tmp_path) == []


def test_a_failed_swap_puts_the_old_folder_back(checkpoint, released, monkeypatch):
    before = contents(released)
    rename = os.rename

    def refuse_the_new_folder(src, dst):
        if ".tmp-" in Path(src).name:
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(dst))
        rename(src, dst)

    monkeypatch.setattr(export.os, "rename", refuse_the_new_folder)
    with pytest.raises(UserError, match=r"EIO"):
        export.export_checkpoint(checkpoint[1], released, overwrite=True)
    assert contents(released) == before
    assert os.listdir(released.parent) == ["released"]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (lambda file, ckpt: file, r"is a file, not a folder"),
        (lambda file, ckpt: file / "hf", r"is under .*file.txt, which is a file"),
        (lambda file, ckpt: ckpt.parent, r"holds ckpt_path"),
    ],
)
def test_targets_export_cannot_use_are_refused_before_reading(checkpoint, tmp_path, target, message):
    file = tmp_path / "file.txt"
    file.write_text("keep\n")
    with pytest.raises(UserError, match=message):
        export.export_checkpoint(checkpoint[1], target(file, checkpoint[1]), overwrite=True)
    assert file.read_text() == "keep\n" and checkpoint[1].is_file()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_is_refused(checkpoint, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"ro is not writable; pick a writable out_dir"):
            export.export_checkpoint(checkpoint[1], parent / "hf")
    finally:
        parent.chmod(0o755)


@pytest.mark.slow
def test_cli_refuses_a_non_empty_out_dir_in_one_line(checkpoint, released):
    result = run_cli("src.export", f"ckpt_path={checkpoint[1]}", f"out_dir={released}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: out_dir=")
    assert "overwrite=true" in result.stderr
    result = run_cli("src.export", f"ckpt_path={checkpoint[1]}", f"out_dir={released}", "overwrite=true")
    assert result.returncode == 0, result.stderr
    assert "notes.txt" not in os.listdir(released)
