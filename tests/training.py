"""Helpers for tests that compose the real Hydra config and train in-process."""

from __future__ import annotations

import csv
import random
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from tests.conftest import REPO_ROOT

CONF_DIR = str(REPO_ROOT / "src" / "conf")


def write_text(path: Path, words: int = 6000, seed: int = 0) -> Path:
    """A small deterministic English-like text (no network, no shared files needed)."""
    rng = random.Random(seed)
    vocab = "the king said that a man of good heart will go to war and come home with honour".split()
    lines = [" ".join(rng.choice(vocab) for _ in range(12)).capitalize() + "." for _ in range(words // 12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def fast_overrides(tmp: Path, text: Path, *extra: str) -> list[str]:
    """A tiny, fp32, CPU, CSV-logged run in `tmp` on a text file that takes seconds."""
    return tiny_run(tmp, f"data.path={text}", *extra)


def stream_overrides(tmp: Path, shards: Path, *extra: str) -> list[str]:
    """The same tiny run on streamed parquet shards (data=cosmopedia_v2 with local files)."""
    return tiny_run(
        tmp,
        "data=cosmopedia_v2",
        f"data.data_files='{shards}/*.parquet'",
        "data.val_documents=3",
        "data.docs_per_read=4",
        *extra,
    )


def tiny_run(tmp: Path, *extra: str) -> list[str]:
    return [
        "model=tiny",
        "logger=csv",
        "precision=32-true",
        "trainer.accelerator=cpu",
        f"paths.root_dir={tmp}",
        f"paths.output_dir={tmp / 'run'}",
        "data.seq_len=32",
        "data.batch_size=4",
        "trainer.log_every_n_steps=1",
        "trainer.limit_val_batches=2",
        "eval_every=5",
        "schedule.warmup_steps=3",
        "checkpoint_every=5",
        "callbacks.text_samples.every_n_steps=0",
        "callbacks.text_samples.max_new_tokens=4",
        "callbacks.progress_bar.refresh_rate=0",
        *extra,
    ]


@contextmanager
def hydra_context():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        yield


def compose_train(overrides: list[str]) -> DictConfig:
    import src.train  # noqa: F401  (registers the config resolvers)

    return compose(config_name="train", overrides=overrides)


def run_training(overrides: list[str]) -> dict[str, float]:
    from src.training.checked_config import checked_config
    from src.training.run import train

    with hydra_context():
        return train(checked_config(compose_train(overrides), overrides))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged(run_dir: Path, key: str) -> dict[int, float]:
    """step -> value of one metric from the run's CSV."""
    return {int(row["step"]): float(row[key]) for row in read_metrics(run_dir) if row.get(key)}
