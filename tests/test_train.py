"""End-to-end training on CPU: composition, exact continuation, LR continuity, resume rules."""

import json
import logging
import math
import warnings

import pytest
import torch
from hydra import compose
from omegaconf import OmegaConf

from src.errors import UserError
from src.training.checkpoint import migrate_overrides, read_checkpoint
from src.training.global_batch import resolve_global_batch
from src.training.lr_schedule import LRSchedule
from tests.conftest import REPO_ROOT
from tests.training import (
    compose_train,
    fast_overrides,
    hydra_context,
    logged,
    read_metrics,
    run_training,
    write_text,
)


@pytest.fixture
def text(tmp_path):
    return write_text(tmp_path / "input.txt")


def weights(ckpt) -> dict[str, torch.Tensor]:
    return read_checkpoint(ckpt)["state_dict"]


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model=smollm2_135m"],
        ["model=smollm2_360m", "trainer=gpu", "precision=bf16-true"],
        ["model=smollm2_1.7b", "trainer=fsdp"],
        ["trainer=ddp", "logger=tensorboard", "schedule.kind=cosine"],
        ["experiment=smoke", "logger=none", "schedule.kind=constant", "precision=16-mixed"],
        [
            "optim.lr=3e-4",
            "data.seq_len=512",
            "data.batch_size=8",
            "trainer.accumulate_grad_batches=4",
            "seed=7",
        ],
    ],
)
def test_every_config_group_composes(overrides):
    with hydra_context():
        cfg = compose_train(overrides)
    assert cfg.model._target_ == "src.models.SmolLM2Config"
    if "trainer.accumulate_grad_batches=4" in overrides:
        assert cfg.trainer.val_check_interval == cfg.eval_every * 4


SEED_135M = (2048, 8, 4, 3e-3, 250, 250, 500, "Once upon a time")  # experiment/smollm2_135m.yaml
DEFAULTS = (256, 16, 1, 3e-3, 100, 100, 200, "ROMEO:")  # train.yaml's groups


@pytest.mark.parametrize(
    ("overrides", "recipe", "values"),
    [
        ([], "none (defaults of train.yaml)", DEFAULTS),
        (["model=smollm2_360m"], "none (defaults of train.yaml)", DEFAULTS),
        (["model=smollm2_135m"], "experiment=smollm2_135m (default for model=smollm2_135m)", SEED_135M),
        (["model=smollm2_135m", "~experiment"], "none (defaults of train.yaml)", DEFAULTS),
        (
            ["model=smollm2_135m", "experiment=smoke"],
            "experiment=smoke",
            (256, 16, 1, 3e-3, 5, 10, 10, "ROMEO:"),
        ),
        (["experiment=smollm2_135m_cosmopedia"], "experiment=smollm2_135m_cosmopedia", SEED_135M),
    ],
)
def test_the_recipe_is_the_experiment_named_else_the_models_own(overrides, recipe, values):
    from src.training.run import applied_recipe

    with hydra_context():
        assert applied_recipe(overrides) == recipe
        cfg = compose_train(overrides)
    assert (
        cfg.data.seq_len,
        cfg.data.batch_size,
        resolve_global_batch(cfg, set()).accumulation,
        cfg.optim.lr,
        cfg.schedule.warmup_steps,
        cfg.eval_every,
        cfg.checkpoint_every,
        cfg.callbacks.text_samples.prompts[0],
    ) == values
    if "135m" in recipe:
        assert cfg.model.hidden_size == 576


@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 2])
def test_continuation_is_exact(tmp_path, text, accumulation):
    """20 steps straight == 10 steps, then continue from last.ckpt to 20: same weights, same losses."""
    # The schedule horizon is fixed, as it is for a real run planned for 20 steps.
    common = (f"trainer.accumulate_grad_batches={accumulation}", "schedule.total_steps=20")
    straight = fast_overrides(tmp_path / "a", text, "trainer.max_steps=20", *common)
    run_training(straight)

    first = fast_overrides(tmp_path / "b", text, "trainer.max_steps=10", *common)
    run_training(first)
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == 10
    run_training(fast_overrides(tmp_path / "b", text, "trainer.max_steps=20", f"ckpt_path={last}", *common))

    a, b = weights(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"), weights(last)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses_a, losses_b = (
        logged(tmp_path / "a" / "run", "train/loss"),
        logged(tmp_path / "b" / "run", "train/loss"),
    )
    assert len(losses_a) == 20 and losses_a == losses_b
    assert logged(tmp_path / "a" / "run", "lr") == logged(tmp_path / "b" / "run", "lr")
    # The continuation kept the periodic checkpoints of the first part.
    names = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").glob("step_*.ckpt"))
    assert names == ["step_0000005.ckpt", "step_0000010.ckpt", "step_0000015.ckpt", "step_0000020.ckpt"]


def test_a_continuation_with_another_accumulation_steps_on_whole_global_batches(tmp_path, text):
    """256 tokens a step: 1 micro-batch of 8 windows to step 5, then 2 of 4 (another
    data.batch_size, or fewer devices, under tokens_per_step): the straight run's steps,
    losses and validations, up to the order of a sum."""
    common = ("tokens_per_step=256", "schedule.total_steps=10", "kernels=[]")
    run_training(fast_overrides(tmp_path / "a", text, "data.batch_size=8", "trainer.max_steps=10", *common))
    run_training(fast_overrides(tmp_path / "b", text, "data.batch_size=8", "trainer.max_steps=5", *common))
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    # Twice the validation batches of half the size: the same validation windows.
    continued = (
        "data.batch_size=4",
        "trainer.limit_val_batches=4",
        "trainer.max_steps=10",
        f"ckpt_path={last}",
    )
    run_training(fast_overrides(tmp_path / "b", text, *continued, *common))
    straight, split = tmp_path / "a" / "run", tmp_path / "b" / "run"
    assert read_checkpoint(last)["val_windows"] == 2 * 8
    for key in ("train/loss", "grad_norm", "val/loss"):
        assert logged(split, key) == pytest.approx(logged(straight, key), rel=1e-5), key
    assert logged(split, "data/windows_seen") == logged(straight, "data/windows_seen")
    a, b = weights(straight / "checkpoints" / "last.ckpt"), weights(last)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-6)


def test_a_continuation_validating_on_other_windows_says_so(tmp_path, text):
    """trainer.limit_val_batches counts batches: half the batch size, half the windows."""
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["val_windows"] == 2 * 4  # limit_val_batches=2 of data.batch_size=4
    continued = fast_overrides(
        tmp_path, text, "trainer.max_steps=10", "data.batch_size=2", f"ckpt_path={last}"
    )
    with pytest.warns(
        UserWarning, match="read 4 windows and the ones before 8, so val/loss is not comparable"
    ):
        run_training(continued)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="this validation read")
        run_training(
            [*continued[:-1], "trainer.max_steps=15", "trainer.limit_val_batches=4", f"ckpt_path={last}"]
        )


def test_a_continuation_keeps_its_checkpoints_kernels_when_the_timing_cache_says_otherwise(
    tmp_path, text, monkeypatch
):
    """Between a run and its continuation the timing cache was deleted and measured again, and
    now drops what the run kept: the continuation keeps the checkpoint's kernels, bit for bit."""
    from src.kernels.probes import Workload
    from src.kernels.timing_cache import TimingCache
    from src.models import SmolLM2Config

    monkeypatch.setenv("SMOLLM2_CACHE_DIR", str(tmp_path / "cache"))
    workload = Workload(SmolLM2Config.from_preset("tiny"), 4, 32, torch.float32, training=True).key()

    def cache_keeps(*names: str) -> None:
        cache = TimingCache()
        for name in ("causal_attention", "rms_norm", "onednn_linear", "onednn_linear_torch_wgrad"):
            cache.put(name, workload, (0.5, 1.0) if name in names else (2.0, 1.0))

    cache_keeps("causal_attention", "rms_norm")
    common = ("schedule.total_steps=6",)
    run_training(fast_overrides(tmp_path / "a", text, "trainer.max_steps=6", *common))
    run_training(fast_overrides(tmp_path / "b", text, "trainer.max_steps=3", *common))
    last = tmp_path / "b" / "run" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["cpu_kernels"]["kept"] == ["causal_attention", "rms_norm"]

    cache_keeps("onednn_linear")
    run_training(fast_overrides(tmp_path / "b", text, "trainer.max_steps=6", f"ckpt_path={last}", *common))
    assert read_checkpoint(last)["cpu_kernels"]["kept"] == ["causal_attention", "rms_norm"]
    a, b = weights(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"), weights(last)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_a_continuation_on_another_kind_of_data_says_it_reads_it_from_the_beginning(tmp_path):
    """A new stage on other data is allowed; Lightning would restore no position into it, silently."""
    from src.data.stream_datamodule import StreamDataModule
    from src.data.text_datamodule import TextFileDataModule
    from src.training.run import other_data_note

    text = TextFileDataModule(str(tmp_path / "input.txt"), default_path="", url="", seq_len=8, batch_size=2)
    stream = StreamDataModule("local", 8, 2, data_files=str(tmp_path / "*.parquet"))
    from_stream = {"global_step": 5, "StreamDataModule": {"ranks": []}}
    assert other_data_note(from_stream, text) == (
        "the checkpoint's data position is in StreamDataModule data; "
        "this run reads its TextFileDataModule data from the beginning"
    )
    assert other_data_note(from_stream, stream) is None
    assert other_data_note({"global_step": 5}, text) is None  # a checkpoint without a data position


def test_a_local_tokenizer_is_kept_by_its_absolute_path(tmp_path, monkeypatch):
    """The checkpoint keeps data.tokenizer for export and generate, which may run elsewhere."""
    import shutil

    from src.data.tokenizer import DEFAULT_TOKENIZER
    from src.training.checked_config import absolute_tokenizer_path

    shutil.copytree(DEFAULT_TOKENIZER, tmp_path / "tok")
    monkeypatch.chdir(tmp_path)
    for name, kept_as in [("tok", str(tmp_path / "tok")), ("HuggingFaceTB/SmolLM2-135M", None)]:
        with hydra_context():
            cfg = compose_train([f"data.tokenizer={name}"])
        absolute_tokenizer_path(cfg)
        assert cfg.data.tokenizer == (kept_as or name)  # a hub id, no folder here: left as named


def test_lr_is_continuous_when_a_run_is_extended(tmp_path, text):
    """Extending max_steps on resume keeps the schedule's horizon: no LR jump at the boundary."""
    extra = ("schedule.kind=cosine",)
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=10", *extra))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=14", f"ckpt_path={last}", *extra))
    lr = logged(tmp_path / "run", "lr")
    schedule = LRSchedule(kind="cosine", warmup_steps=3, total_steps=10)
    assert sorted(lr) == list(range(1, 15))  # step s trains at the schedule's value after s - 1 steps
    assert [lr[s] for s in range(1, 15)] == pytest.approx([3e-3 * schedule(s) for s in range(14)], rel=1e-5)
    assert lr[11] == lr[14] == pytest.approx(3e-3 * 0.1)  # past the horizon: held at the floor, no jump
    assert read_checkpoint(last)["lr_schedule"]["total_steps"] == 10


@pytest.mark.parametrize(
    ("max_steps", "accumulate", "logged_steps"), [(6, 1, [4, 6]), (3, 1, [3]), (5, 2, [4, 5])]
)
def test_the_last_step_is_logged_though_not_on_the_log_interval(
    tmp_path, text, max_steps, accumulate, logged_steps
):
    """A run logs every 4th step and its last, so its final loss, throughput and data counts, and
    its summary's, are those of the step it ended at; a run shorter than the interval logs that
    one; with accumulation, once per optimizer step."""
    every = ("trainer.log_every_n_steps=4", "checkpoint_every=4", "eval_every=4")
    steps = (f"trainer.max_steps={max_steps}", f"trainer.accumulate_grad_batches={accumulate}")
    run_training(fast_overrides(tmp_path, text, *steps, *every))
    run = tmp_path / "run"
    for key in ("train/loss", "lr", "tokens_per_s", "data/windows_seen"):
        assert [int(row["step"]) for row in read_metrics(run) if row.get(key)] == logged_steps, key
    summary = json.loads((run / "summary.json").read_text())
    assert summary["train/loss_last"] == logged(run, "train/loss")[max_steps]


def test_resume_at_max_steps_has_nothing_to_do_and_below_is_an_error(tmp_path, text, caplog):
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with caplog.at_level(logging.INFO):  # rank_zero_info writes to Lightning's logger, not to stdout
        assert run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5", f"ckpt_path={last}")) == {}
    assert f"{last} is already at step 5 = trainer.max_steps: nothing to do" in caplog.text
    with pytest.raises(UserError, match="below the checkpoint's step 5"):
        run_training(fast_overrides(tmp_path, text, "trainer.max_steps=3", f"ckpt_path={last}"))


def test_resume_replays_the_runs_own_config(tmp_path, text):
    """`ckpt_path=... trainer.max_steps=N` alone continues with the run's model and data settings."""
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5", "data.seq_len=24"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={last}", "trainer.max_steps=6"]
    from src.training.overrides import replay_overrides

    replayed = replay_overrides(read_checkpoint(last)["cli_overrides"], overrides)
    assert "data.seq_len=24" in replayed and replayed[-2:] == overrides
    with hydra_context():
        assert compose(config_name="train", overrides=replayed).data.seq_len == 24


def test_overrides_stored_by_older_code_are_migrated():
    stored = [
        "model=tiny",
        "schedule=cosine",
        "schedule.warmup_steps=1",
        "schedule=default",
        "callbacks.model_checkpoint.every_n_train_steps=7",
        "cpu_kernels=true",
        "cpu_kernels=false",
        "cpu_malloc_cache=false",
    ]
    assert migrate_overrides(stored) == [
        "model=tiny",
        "schedule.kind=cosine",
        "schedule.warmup_steps=1",
        "schedule=default",
        "checkpoint_every=7",
        "kernels=[]",
        "keep_freed_host_memory=false",
    ]


def test_resume_with_another_model_says_which_fields_differ(tmp_path, text):
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5"))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"another model config \(hidden_size: 64 in checkpoint, 96 now"):
        run_training(
            fast_overrides(tmp_path, text, "trainer.max_steps=8", f"ckpt_path={last}", "model.hidden_size=96")
        )


def step0_loss(config) -> float:
    from src.kernels.loss import lm_cross_entropy
    from src.models import SmolLM2

    model = SmolLM2(config)
    batch = torch.randint(0, config.vocab_size, (4, 129))
    with torch.no_grad():
        return lm_cross_entropy(model.hidden_states(batch[:, :-1]), model.lm_head.weight, batch[:, 1:]).item()


@pytest.mark.parametrize("preset", ["tiny", pytest.param("smollm2_135m", marks=pytest.mark.slow)])
def test_step0_loss_is_that_of_near_uniform_predictions(preset):
    """At SmolLM2's init (tied embedding, std 1/sqrt(C)) logits are N(0, 1) per position, so the
    loss lies between ln V and ln V + 1/2 (Jensen); shrinking init_std brings it to ln V."""
    from src.models import SmolLM2Config

    config = SmolLM2Config.from_preset(preset)
    ln_v = math.log(config.vocab_size)
    assert ln_v - 0.05 <= step0_loss(config) <= ln_v + config.hidden_size * config.init_std**2 / 2 + 0.05
    small = SmolLM2Config(**{**config.to_dict(), "init_std": 0.2 / math.sqrt(config.hidden_size)})
    assert abs(step0_loss(small) - ln_v) < 0.1


@pytest.mark.slow
def test_smollm2_135m_recipe_starts_on_cpu_and_steps(tmp_path, text, caplog):
    metrics = run_training(
        fast_overrides(
            tmp_path,
            text,
            "model=smollm2_135m",
            "data.seq_len=32",
            "data.batch_size=1",
            "tokens_per_step=64",
            "trainer.max_steps=2",
            "schedule.warmup_steps=1",
            "trainer.limit_val_batches=1",
            "~callbacks.text_samples",
            "~callbacks.last_checkpoint",  # a 1.6 GB write is not what this test is about
            "~callbacks.model_checkpoint",
        )
    )
    assert math.isfinite(metrics["train/loss"])
    recipe = "experiment=smollm2_135m (default for model=smollm2_135m)"
    assert f"recipe: {recipe}" in caplog.messages
    assert (
        "global batch: 64 tokens per optimizer step = "
        "1 sequences x 32 tokens x 2 micro-batches x 1 process(es)" in caplog.messages
    )
    assert OmegaConf.load(tmp_path / "run" / "csv" / "hparams.yaml").recipe == recipe


CALLBACKS = sorted(OmegaConf.load(REPO_ROOT / "src" / "conf" / "callbacks" / "default.yaml"))


@pytest.mark.parametrize("removed", CALLBACKS)
def test_removing_one_callback_leaves_the_others_working(tmp_path, text, removed):
    metrics = run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5", f"~callbacks.{removed}"))
    assert math.isfinite(metrics["train/loss"])
    files = {"model_checkpoint": "step_0000005.ckpt", "last_checkpoint": "last.ckpt"}
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert saved == sorted(name for callback, name in files.items() if callback != removed)
    assert (tmp_path / "run" / "samples.jsonl").is_file() == (removed != "text_samples")
    tokens_seen = logged(tmp_path / "run", "tokens_seen")  # counted from the (4, 33) batches
    assert tokens_seen == ({} if removed == "throughput" else {s: 4 * 32 * float(s) for s in range(1, 6)})


def test_bad_learning_rate_is_a_user_error(tmp_path, text):
    with pytest.raises(UserError, match="optim.lr must be a finite number > 0"):
        run_training(fast_overrides(tmp_path, text, "trainer.max_steps=5", "optim.lr=0"))


def test_tensorboard_logger_writes_events(tmp_path, text):
    run_training(fast_overrides(tmp_path, text, "trainer.max_steps=3", "logger=tensorboard", "eval_every=3"))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "run" / "csv" / "metrics.csv").is_file()


def test_plain_pytorch_trains_the_losses_of_the_default_kernels(tmp_path, text):
    """`kernels=[]` swaps nothing into the model; in fp32 the run is the same within rounding."""
    run_training(fast_overrides(tmp_path / "kernels", text, "trainer.max_steps=5", "kernels_policy=always"))
    run_training(fast_overrides(tmp_path / "plain", text, "trainer.max_steps=5", "kernels=[]"))
    default, plain = (logged(tmp_path / name / "run", "train/loss") for name in ("kernels", "plain"))
    assert sorted(plain) == sorted(default) == list(range(1, 6))
    assert [plain[s] for s in range(1, 6)] == pytest.approx([default[s] for s in range(1, 6)], rel=1e-4)


@pytest.mark.slow
def test_compiled_training_matches_eager_and_resumes_with_compile_off(tmp_path, text):
    """compile=true trains the same numbers; its checkpoint continues with compile=false."""
    common = ("schedule.total_steps=8",)
    run_training(fast_overrides(tmp_path / "eager", text, "trainer.max_steps=8", *common))
    run_training(fast_overrides(tmp_path / "mixed", text, "trainer.max_steps=5", "compile=true", *common))
    last = tmp_path / "mixed" / "run" / "checkpoints" / "last.ckpt"
    assert weights(last).keys() == weights(tmp_path / "eager" / "run" / "checkpoints" / "last.ckpt").keys()
    run_training(
        fast_overrides(
            tmp_path / "mixed", text, "trainer.max_steps=8", f"ckpt_path={last}", "compile=false", *common
        )
    )
    eager, mixed = (
        logged(tmp_path / "eager" / "run", "train/loss"),
        logged(tmp_path / "mixed" / "run", "train/loss"),
    )
    assert sorted(mixed) == sorted(eager) == list(range(1, 9))
    assert [mixed[s] for s in range(1, 9)] == pytest.approx([eager[s] for s in range(1, 9)], rel=1e-4)
