"""Batches of `seq_len + 1` windows cut from one token array.

Training batches come from an endless sequence of epochs; each epoch visits every
window once, in a permutation that depends only on the seed and the epoch number.
The windows form one endless sequence, and a run's position in it is the number of windows
all ranks have consumed, so resuming needs nothing but that count, whatever the batch shape
before it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from src.data.packing import num_windows


def window(tokens: np.ndarray, index: int, seq_len: int) -> torch.Tensor:
    start = index * seq_len
    return torch.from_numpy(tokens[start : start + seq_len + 1].astype(np.int64))


class ShuffledWindowBatches(IterableDataset):
    """Endless (batch_size, seq_len + 1) batches for one rank, the first batch of all ranks
    starting at window `start_window` of the endless sequence.

    Dataloader workers take batches round-robin (worker w yields start + w, start + w + W, ...),
    which is the order the DataLoader hands them out, so the sequence is the same for any
    number of workers.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        seq_len: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_window: int = 0,
    ) -> None:
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.rank, self.world_size, self.start_window = rank, world_size, start_window
        self.num_windows = num_windows(len(tokens), seq_len)
        self._order: tuple[int, torch.Tensor] | None = None

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = (epoch, torch.randperm(self.num_windows, generator=generator))
        return self._order[1]

    def window_index(self, position: int) -> int:
        """The window at `position` of the endless, epoch-by-epoch shuffled sequence."""
        epoch, offset = divmod(position, self.num_windows)
        return int(self.epoch_order(epoch)[offset])

    def batch(self, batch_index: int) -> torch.Tensor:
        """This rank's part of the `batch_index`-th global batch from `start_window`."""
        first = self.start_window + (batch_index * self.world_size + self.rank) * self.batch_size
        rows = [
            window(self.tokens, self.window_index(first + i), self.seq_len) for i in range(self.batch_size)
        ]
        return torch.stack(rows)  # (batch_size, seq_len + 1)

    def __iter__(self) -> Iterator[torch.Tensor]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        batch_index = worker_id
        while True:
            yield self.batch(batch_index)
            batch_index += num_workers


class OrderedWindows(Dataset):
    """Every window of a token array once, in order: the validation set, split over ranks.

    Rank r of W takes windows r, r + W, r + 2W, ... (DistributedSampler's split, which Lightning
    is told not to add: src/training/run.py). Every rank must run as many batches (each forward
    of DDP or FSDP is collective), so where W does not divide the windows a rank's last item
    repeats one, marked not to count: items are `(window, counted)`, and val/loss is the mean
    over the counted windows of all ranks, the same for any number of ranks.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, rank: int = 0, world_size: int = 1) -> None:
        self.tokens, self.seq_len, self.rank, self.world_size = tokens, seq_len, rank, world_size
        self.num_windows = num_windows(len(tokens), seq_len)
        self.length = -(-self.num_windows // world_size)  # ceil

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        if not 0 <= index < self.length:
            raise IndexError(f"window {index} of {self.length}")
        position = self.rank + index * self.world_size
        return window(self.tokens, position % self.num_windows, self.seq_len), position < self.num_windows
