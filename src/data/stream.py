"""Documents streamed from the Hugging Face Hub (cosmopedia-v2) or local parquet shards, packed on the fly.

Readers. A rank's dataloader workers are its readers (one when `num_workers=0`), and reader
`r` of rank `k` is reader `k * R + r` of all `N = world_size * R`. `datasets`'
`split_dataset_by_node` gives each its part, so every document is read by exactly one
reader of one rank:
- `shard_by="shards"`: whole parquet files, file `i` to reader `i % N` (datasets' rule).
  When N does not divide the shard count, some readers get one file more than others and
  their pass takes longer; the others start their next pass sooner, so their documents are
  seen more often (104 files on 32 readers: 8 readers hold 4 files, 24 hold 3). With
  equal files and N dividing the count, readers are balanced.
- `shard_by="examples"`: every reader reads every file and keeps one document in N, in
  turn: balanced whatever N is, at N times the reading (and download) cost.
- `shard_by=None` (default): "shards" when there are at least N files, else "examples"
  (fewer files than readers would leave readers idle).

Order. Documents come in file order; each pass visits the files in a new order
(`set_epoch(pass)`, the same permutation on every reader). There is no shuffle buffer:
its contents cannot be saved, so a resumed run would not see the same windows.

Position. Each batch carries its reader's `ReaderState` (datasets' `state_dict` at the
start of the current read, how many of that read's documents are packed, the packer's
remainder), taken between two windows, so a reader rebuilt from it yields exactly the
batches that followed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets
import torch
from datasets.distributed import split_dataset_by_node
from packaging.version import Version
from torch.utils.data import IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from src.data.packing import WindowPacker, tokenize_documents
from src.errors import UserError, first_line

# Earlier versions resume from a state restored once, but restart from the beginning of
# the pass on the second resume (the state saved after a resume was the initial one).
MIN_DATASETS = "5.0.1"


def open_stream(
    path: str, name: str | None, split: str, data_files: str | list[str] | None, text_column: str
) -> datasets.IterableDataset:
    """The dataset as a stream of one column; local parquet shards when `data_files` is given."""
    if Version(datasets.__version__) < Version(MIN_DATASETS):
        raise UserError(
            f"datasets {datasets.__version__} cannot resume a stream twice; "
            f"pip install 'datasets>={MIN_DATASETS}'"
        )
    source = f"{data_files!r} (parquet)" if data_files else f"{path} ({name or 'default'}, {split})"
    try:
        if data_files:
            stream = datasets.load_dataset("parquet", data_files=data_files, split=split, streaming=True)
        else:
            stream = datasets.load_dataset(path, name, split=split, streaming=True)
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot open dataset {source}: {first_line(err)}; to read local parquet shards of the "
            "same schema, pass data.data_files='<dir>/*.parquet'"
        ) from None
    if stream.column_names is not None and text_column not in stream.column_names:
        raise UserError(
            f"dataset {source} has no column {text_column!r} (columns: {', '.join(stream.column_names)}); "
            "set data.text_column"
        )
    return stream.select_columns([text_column])


def reader_split(
    stream: datasets.IterableDataset, reader: int, num_readers: int, shard_by: str | None = None
) -> datasets.IterableDataset:
    """Reader `reader`'s part of `stream` (see the module docstring for the rule)."""
    strategy = shard_by or ("shards" if stream.num_shards >= num_readers else "examples")
    if strategy not in ("shards", "examples"):
        raise UserError(f"data.shard_by must be null, 'shards' or 'examples', got {shard_by!r}")
    if strategy == "shards" and stream.num_shards < num_readers:
        raise UserError(
            f"{stream.num_shards} shards cannot be split among {num_readers} readers (ranks x workers); "
            "use data.shard_by=examples or fewer data.num_workers"
        )
    return split_dataset_by_node(stream, rank=reader, world_size=num_readers, strategy=strategy)


class ReaderState:
    """Where one reader stands, taken between two windows; plain values only, for the checkpoint.

    `position` is datasets' state at the start of the current read and `skip` how many of
    that read's documents are already packed; `remainder` is the packer's unemitted tokens.
    A plain class, not a dataclass, so Lightning's batch utilities pass it through untouched.
    """

    __slots__ = ("epoch", "position", "skip", "remainder", "documents")

    def __init__(
        self,
        epoch: int = 0,
        position: dict | None = None,
        skip: int = 0,
        remainder: list[int] | None = None,
        documents: int = 0,
    ) -> None:
        self.epoch, self.position, self.skip = epoch, position, skip
        self.remainder = list(remainder or [])
        self.documents = documents  # documents packed by this reader since the run began

    def snapshot(self, remainder: list[int]) -> ReaderState:
        return ReaderState(self.epoch, self.position, self.skip, remainder, self.documents)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ReaderState:
        return cls(**state)


class PackedStream(IterableDataset):
    """Endless `{"tokens": (batch_size, seq_len + 1), "state": ReaderState}` batches for one rank.

    The DataLoader takes batches from its workers round-robin, so batch `i` of the rank
    comes from reader `i % R`. A resumed loader starts at batch `c`, so its worker `w`
    plays reader `(w + c) % R` (`rotation = c % R`) and the order stays the same.
    Documents in `held_out` (the validation set) are skipped wherever they occur.
    """

    def __init__(
        self,
        stream: datasets.IterableDataset,
        tokenizer: PreTrainedTokenizerBase,
        seq_len: int,
        batch_size: int,
        states: list[ReaderState],
        text_column: str = "text",
        held_out: frozenset[str] = frozenset(),
        rank: int = 0,
        world_size: int = 1,
        rotation: int = 0,
        shard_by: str | None = None,
        docs_per_read: int = 256,
    ) -> None:
        self.stream, self.tokenizer, self.seq_len, self.batch_size = stream, tokenizer, seq_len, batch_size
        self.states, self.text_column, self.held_out, self.rotation = states, text_column, held_out, rotation
        self.rank, self.world_size, self.shard_by = rank, world_size, shard_by
        self.docs_per_read = docs_per_read

    @property
    def num_readers(self) -> int:
        """Readers on this rank: its dataloader workers (the state list has one entry per reader)."""
        return len(self.states)

    def reader_stream(self, reader: int) -> datasets.IterableDataset:
        n = self.num_readers
        return reader_split(self.stream, self.rank * n + reader, self.world_size * n, self.shard_by)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        if num_workers != self.num_readers:
            raise RuntimeError(f"{self.num_readers} reader states for {num_workers} dataloader workers")
        reader = (worker_id + self.rotation) % self.num_readers
        yield from self.batches(reader)

    def batches(self, reader: int) -> Iterator[dict[str, Any]]:
        state = ReaderState.from_dict(self.states[reader].to_dict())  # this iterator's own copy
        packer = WindowPacker(self.seq_len, state.remainder)
        rows: list[list[int]] = []
        for window in packer.feed(self.documents(reader, state)):
            rows.append(window)
            if len(rows) == self.batch_size:
                yield {"tokens": torch.tensor(rows), "state": state.snapshot(packer.buffer)}
                rows = []

    def documents(self, reader: int, state: ReaderState) -> Iterator[list[int]]:
        """Token lists (EOS included) of the reader's documents, pass after pass; `state` follows along."""
        while True:
            stream = self.reader_stream(reader)
            stream.set_epoch(state.epoch)
            fresh_pass = state.position is None and state.skip == 0
            if state.position is not None:
                stream.load_state_dict(state.position)
            packed = 0
            for rows in stream.iter(batch_size=self.docs_per_read):
                texts = [text for text in rows[self.text_column] if text not in self.held_out]
                pending = texts[state.skip :]
                for doc in tokenize_documents(self.tokenizer, pending) if pending else []:
                    state.skip += 1
                    state.documents += 1
                    packed += 1
                    yield doc
                state.position, state.skip = stream.state_dict(), 0
            if fresh_pass and packed == 0:
                raise UserError(
                    f"reader {self.rank * self.num_readers + reader} of {self.world_size * self.num_readers} "
                    "(ranks x workers) got no training documents; use fewer data.num_workers or "
                    "data.shard_by=examples, or a larger dataset"
                )
            state.epoch, state.position, state.skip = state.epoch + 1, None, 0
