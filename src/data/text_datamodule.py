"""The DataModule for one local text file: tokenize once, hold out the tail, serve windows."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from src.data.base import DataSize, WindowDataModule
from src.data.packing import num_windows
from src.data.text_file import download, load_tokens
from src.data.tokenizer import load_tokenizer
from src.data.windows import ShuffledWindowBatches

log = logging.getLogger(__name__)


class TextFileDataModule(WindowDataModule):
    """Any UTF-8 file given as `path`, or (path=None) tiny Shakespeare, downloaded once from
    `url` to `default_path`. A given path is never downloaded to: a typo is an error.

    The training position is the number of windows all ranks have consumed (src/data/windows.py):
    the checkpoint's count at its step, plus this run's optimizer steps at this run's windows per
    step, plus the batches a loss-spike rollback skipped (src/training/spike.py). A checkpoint
    written at any optimizer step so resumes on the next window, and a continuation that changes
    the global batch (data.batch_size, devices, accumulation) neither repeats nor skips any.
    """

    def __init__(
        self,
        path: str | None,
        seq_len: int,
        batch_size: int,
        default_path: str = "data/input.txt",
        url: str | None = None,
        val_fraction: float = 0.1,
        num_workers: int = 0,
        tokenizer: str | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(seq_len, batch_size, num_workers)
        self.path = Path(path if path is not None else default_path)
        self.url = url if path is None else None
        self.val_fraction, self.seed = val_fraction, seed
        self.tokenizer_name = tokenizer
        self.cache_dir = Path(cache_dir) if cache_dir else self.path.parent / "cache"
        self.train_tokens: np.ndarray | None = None
        self.skipped_batches = 0  # by rollbacks, over the whole run (logged as spike/skipped_batches)
        self._windows_at: tuple[int, int] = (0, 0)  # (optimizer step, windows consumed by then)

    def prepare_data(self) -> None:
        """Rank 0 only: download the default file if it is missing, tokenize and cache it."""
        self.tokens()

    def tokens(self) -> np.ndarray:
        """The whole file's token ids, tokenized once and then read from the cache."""
        if not self.path.exists() and self.url:
            log.info(f"downloading {self.url} -> {self.path}")
            download(self.url, self.path)
        return load_tokens(self.path, load_tokenizer(self.tokenizer_name), self.cache_dir)

    def split(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Training head and validation tail (the last `val_fraction` of the file)."""
        cut = int(len(tokens) * (1 - self.val_fraction))
        return tokens[:cut], tokens[cut:]

    def checked_split(self) -> tuple[np.ndarray, np.ndarray]:
        """`split`, each part holding at least one window: the plan refuses a text too short
        for the run as the run does, before the run's folder holds a plan of it."""
        train, val = self.split(self.tokens())
        for name, part in (("training", train), ("validation", val)):
            self.check_holds_a_window(
                part, f"{self.path}: the {name} part", "use a longer text or a smaller data.seq_len"
            )
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.train_tokens is None:
            self.train_tokens, self.val_tokens = self.checked_split()

    def data_size(self) -> DataSize:
        """The file and the tokens of its training windows (one epoch); tokenizes only once per file."""
        train, _ = self.checked_split()
        path = self.path.resolve()
        name = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        return DataSize(str(name), num_windows(len(train), self.seq_len) * self.seq_len)

    def windows_consumed(self) -> int:
        """Training windows all ranks used for the optimizer steps taken so far, or skipped."""
        step, windows = self._windows_at
        trainer = self.trainer
        if trainer is None:
            return windows
        per_step = self.batch_size * trainer.world_size * trainer.accumulate_grad_batches
        return windows + (trainer.global_step - step) * per_step

    def skip_batches(self, batches: int) -> None:
        """The training step count went back by `batches` worth (a rollback); the data does not."""
        self.skipped_batches += batches
        step, windows = self._windows_at
        self._windows_at = (step, windows + batches * self.batch_size * self.trainer.world_size)

    def state_dict(self) -> dict[str, int]:
        return {
            "step": self.trainer.global_step,
            "windows_consumed": self.windows_consumed(),
            "skipped_batches": self.skipped_batches,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.skipped_batches = state_dict.get("skipped_batches", 0)
        if "windows_consumed" in state_dict:
            self._windows_at = (state_dict["step"], state_dict["windows_consumed"])
        else:  # a checkpoint from before the count was kept: its steps had today's global batch
            self._windows_at = (0, self.skipped_batches * self.batch_size * self.trainer.world_size)

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        dataset = ShuffledWindowBatches(
            self.train_tokens,
            self.seq_len,
            self.batch_size,
            seed=self.seed,
            rank=trainer.global_rank if trainer else 0,
            world_size=trainer.world_size if trainer else 1,
            start_window=self.windows_consumed(),
        )
        return self.loader(dataset, batch_size=None)

    @property
    def windows_per_epoch(self) -> int:
        return num_windows(len(self.train_tokens), self.seq_len)

    def run_counts(self) -> dict[str, float]:
        """Windows served to every rank so far, how many of them distinct, and the epochs they make.

        Every epoch visits each window once (src/data/windows.py), so the first `windows_per_epoch`
        are all distinct and every later one repeats one.
        """
        trainer = self.trainer
        if trainer is None or self.train_tokens is None:
            return {}
        seen = self.windows_consumed()
        per_epoch = self.windows_per_epoch
        return {"windows_seen": seen, "unique_windows": min(seen, per_epoch), "epochs": seen / per_epoch}
