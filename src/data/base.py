"""What the DataModules share: the window shape, the validation windows, the loader settings."""

from __future__ import annotations

from dataclasses import dataclass

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from src.data.packing import num_windows
from src.data.windows import OrderedWindows
from src.errors import UserError


@dataclass(frozen=True)
class DataSize:
    """What a DataModule can say of its training data before training: a name, and the tokens
    of one pass (its training windows) when the data is finite, None when it streams."""

    name: str
    epoch_tokens: int | None


class WindowDataModule(L.LightningDataModule):
    """Serves (B, seq_len + 1) windows; a subclass fills `val_tokens` in `setup` and builds training."""

    def __init__(self, seq_len: int, batch_size: int, num_workers: int = 0) -> None:
        super().__init__()
        if seq_len <= 0 or batch_size <= 0:
            raise UserError(f"data.seq_len ({seq_len}) and data.batch_size ({batch_size}) must be positive")
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.val_tokens: np.ndarray | None = None

    def check_holds_a_window(self, tokens: np.ndarray, what: str, fix: str) -> None:
        if num_windows(len(tokens), self.seq_len) == 0:
            raise UserError(
                f"{what} has {len(tokens)} tokens, fewer than one window of seq_len + 1 = "
                f"{self.seq_len + 1}; {fix}"
            )

    def data_size(self) -> DataSize:
        """Cheap to call before `setup` (the plan reads it); a subclass with finite data counts it."""
        return DataSize(type(self).__name__, None)

    def rank_counts(self) -> dict[str, int]:
        """This rank's host-side counters of the training data used so far (summed over ranks when logged)."""
        return {}

    def run_counts(self) -> dict[str, float]:
        """Counts of the training data used so far by the whole run, the same on every rank."""
        return {}

    def val_dataloader(self) -> DataLoader:
        """`(windows, counted)` batches of this rank's share of the validation windows."""
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        windows = OrderedWindows(self.val_tokens, self.seq_len, rank, world_size)
        return self.loader(windows, batch_size=self.batch_size)

    def loader(self, dataset: Dataset | IterableDataset, batch_size: int | None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            pin_memory=bool(self.trainer and self.trainer.strategy.root_device.type == "cuda"),
            persistent_workers=self.num_workers > 0,
        )
