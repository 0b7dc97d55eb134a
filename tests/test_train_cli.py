"""The README's training commands, run as a user types them (subprocesses, real CLI)."""

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from src.models import SmolLM2Config
from src.training import checkpoint as ckpt
from tests.helpers import run_cli, run_plain
from tests.training import fast_overrides, logged, write_text

QUICK = [
    "trainer.accelerator=cpu",
    "logger=csv",
    "data.seq_len=64",
    "data.batch_size=8",
    "trainer.max_steps=100",
    "schedule.warmup_steps=10",
    "eval_every=50",
    "trainer.limit_val_batches=8",
    "callbacks.text_samples.every_n_steps=50",
    "callbacks.text_samples.max_new_tokens=16",
]


@pytest.mark.slow
def test_quick_start_on_tiny_shakespeare_learns(tmp_path, shakespeare_path):
    """The default run (shortened): validation loss falls well below its untrained start."""
    run = tmp_path / "run"
    result = run_cli("src.train", f"data.path={shakespeare_path}", f"hydra.run.dir={run}", *QUICK)
    assert result.returncode == 0, result.stderr[-3000:]
    val = logged(run, "val/loss")
    assert sorted(val) == [0, 50, 100]  # the steps of the weights, as the samples name them
    assert val[0] == pytest.approx(math.log(49152), abs=0.6)
    assert val[100] < val[0] - 3.0, val
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert {s["step"] for s in samples} == {0, 50, 100}
    for name in ("checkpoints/last.ckpt", ".hydra/config.yaml", "csv/metrics.csv"):
        assert (run / name).is_file(), name


@pytest.mark.slow
def test_multirun_sweeps_the_learning_rate(tmp_path, shakespeare_path):
    """As the README types it: the sweep's folder under the launch folder's logs/."""
    result, _ = run_plain(
        "src.train",
        "-m",
        "experiment=smoke",
        "optim.lr=1e-3,3e-3",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "schedule.warmup_steps=1",
        "data.seq_len=32",
        "data.batch_size=2",
        "val_at_start=false",
        "callbacks.text_samples.prompts=[]",
        f"data.path={shakespeare_path}",
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    lrs = {}
    for job in ("0", "1"):
        lr = logged(sweep / job, "lr")
        assert sorted(lr) == [1, 2, 3]
        lrs[job] = lr[3]
        assert OmegaConf.load(sweep / job / ".hydra" / "config.yaml").optim.lr == pytest.approx(lr[3])
    assert lrs == pytest.approx({"0": 1e-3, "1": 3e-3})


def test_bad_override_is_one_line_and_non_zero(tmp_path):
    result = run_cli("src.train", "optim.lr=-1", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == "error: optim.lr must be a finite number > 0, got -1"


@pytest.mark.parametrize(
    ("override", "error", "imported"),
    [
        ("trainer.max_stepz=5", "error: Could not override 'trainer.max_stepz'", set()),  # before torch
        ("optim.lr=-1", "error: optim.lr must be a finite number > 0", set()),  # a value alone: before torch
        (
            "experiment=smok",
            "error: no recipe experiment=smok; choose one of seed000",
            set(),
        ),  # not the defaults
        # a value checked against the model: before Lightning
        ("data.seq_len=9000", "error: data.seq_len=9000 exceeds the model's context", {"torch"}),
    ],
)
def test_a_config_error_does_not_wait_for_lightning(tmp_path, override, error, imported):
    result, made = run_plain("src.train", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(error) and made == imported, result.stderr


@pytest.mark.parametrize("sharded", [False, True], ids=["file", "sharded-folder"])
def test_a_continuations_bad_value_does_not_wait_for_lightning(tmp_path, sharded):
    """Its checkpoint's overrides (model=tiny here, a 2,048-token context) are replayed, then
    checked, before Lightning; a sharded checkpoint (trainer=fsdp) is a folder whose metadata file
    holds them. A value that is bad on its own fails before torch, the checkpoint unread."""
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    (path if sharded else path.parent).mkdir(parents=True)
    model = SmolLM2Config.from_preset("tiny").to_dict()
    metadata = {ckpt.MODEL_CONFIG: model, ckpt.OVERRIDES: ["model=tiny"], "global_step": 3}
    torch.save(metadata, path / ckpt.SHARDED_METADATA if sharded else path)
    fsdp = ("trainer=fsdp", "trainer.accelerator=cpu") if sharded else ()
    args = (*fsdp, f"ckpt_path={path}", "trainer.max_steps=6")
    result, made = run_plain("src.train", *args, "data.seq_len=4096")  # fits smollm2_135m, not tiny
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith(
        "error: data.seq_len=4096 exceeds the model's context of 2048 tokens"
    )
    assert made == {"torch"}
    result, made = run_plain("src.train", *args, "optim.lr=-1")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == "error: optim.lr must be a finite number > 0, got -1"
    assert made == set()


def test_the_runs_messages_are_printed_once_and_kept_in_its_log(tmp_path):
    """In a fresh process Lightning is imported after Hydra has set up logging, which would
    otherwise send its messages (and the run's) to stdout and stderr both, differently formatted."""
    run = tmp_path / "run"
    text = write_text(tmp_path / "input.txt")
    overrides = fast_overrides(tmp_path, text, "trainer.max_steps=2", f"hydra.run.dir={run}")
    result, _ = run_plain("src.train", *overrides, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "recipe: none (defaults of train.yaml)" in result.stderr.splitlines()
    assert "recipe:" not in result.stdout and (result.stderr + result.stdout).count("global batch:") == 1
    log = (run / "train.log").read_text()
    assert "recipe: none" in log and "global batch:" in log and "training ended:" in log


def test_print_the_composed_config():
    result = run_cli("src.train", "--cfg", "job", "model=smollm2_135m")
    assert result.returncode == 0, result.stderr
    assert "hidden_size: 576" in result.stdout and "seq_len: 2048" in result.stdout
