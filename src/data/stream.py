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

Order. Documents come in file order. By files, a reader keeps its files from pass to pass
and visits them in file order in its first pass, then in a new order each pass (the files'
ranks in a permutation seeded by the pass). By examples, each pass visits the files in a
new order (`set_epoch(pass)`, the same permutation on every reader). There is no shuffle
buffer: its contents cannot be saved, so a resumed run would not see the same windows.

Position. Each batch carries its reader's `ReaderState`, taken between two windows, so a
reader rebuilt from it yields exactly the batches that followed: the packer's remainder and,
by files, each of the reader's files' completed passes and next row (a reader reads its
least-read file first, then by index: file order, pass after pass). By examples, and in
positions saved before elastic resume until their pass ends, it is datasets' `state_dict`
at the start of the current read and how many of that read's documents are packed.

Elastic resume (`src/data/reshard.py`). A continuation may change the readers (devices x
workers) when the checkpoint and the continuation both split by files. Every file keeps its
completed passes and next row, and new reader `g` of `N'` takes the files `f` with
`f % N' == g`, so no document is repeated or skipped: each is packed once per pass of its
file, as without the switch. Old reader `g`'s unemitted tokens (at most `seq_len`) go to new
reader `g % N'`, appended in order without the first token of each after the first (it was
already its window's last target), so every token stays a prediction target exactly once; a
new reader that gets none starts as at the beginning of a run (its first token is context
only: `N' - N` tokens when growing). Only the order changes. By examples, readers keep one
document in N of the whole stream and cannot be split anew: that is a one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import datasets
import numpy as np
import torch
from datasets.distributed import split_dataset_by_node
from packaging.version import Version
from torch.utils.data import IterableDataset, get_worker_info
from transformers import PreTrainedTokenizerBase

from src.data.bad_shards import (
    bad_shard,
    find_bad_shards,
    read_batches,
    unreadable_by_examples,
    without_empty_shards,
)
from src.data.packing import WindowPacker, tokenize_documents
from src.errors import UserError, first_line

# Earlier versions resume from a state restored once, but restart from the beginning of
# the pass on the second resume (the state saved after a resume was the initial one).
MIN_DATASETS = "5.0.1"


def open_stream(
    path: str,
    name: str | None,
    split: str,
    data_files: str | list[str] | None,
    text_column: str,
    skip_bad_files: bool = False,
) -> tuple[datasets.IterableDataset, list[str], frozenset[int]]:
    """The dataset as a stream of one column (local parquet shards when `data_files` is given),
    its files in stream order, and the indices of the bad ones to skip (src/data/bad_shards.py)."""
    if Version(datasets.__version__) < Version(MIN_DATASETS):
        raise UserError(
            f"datasets {datasets.__version__} cannot resume a stream twice; "
            f"pip install 'datasets>={MIN_DATASETS}'"
        )
    if isinstance(data_files, str) and os.path.isdir(data_files):  # datasets would say "Unable to find"
        raise UserError(
            f"data.data_files={data_files} is a folder; pass a glob of its shards, "
            f"data.data_files='{data_files.rstrip('/')}/*.parquet'"
        )
    source = f"{data_files!r} (parquet)" if data_files else f"{path} ({name or 'default'}, {split})"

    def builder(**kwargs) -> datasets.DatasetBuilder:
        if data_files:
            return datasets.load_dataset_builder("parquet", data_files=data_files, **kwargs)
        return datasets.load_dataset_builder(path, name, **kwargs)

    try:
        files = [str(file) for file in (builder().config.data_files or {}).get(split, [])]
    except (OSError, ValueError) as err:
        raise cannot_open(source, err) from None
    if data_files and (non_empty := without_empty_shards(files)) != files:
        if not non_empty:
            raise UserError(f"every shard of {source} has no rows; point data.data_files at shards with data")
        files, data_files = non_empty, non_empty
    problems, features = find_bad_shards(files, text_column)
    for index, problem in problems.items():
        bad_shard(files[index], problem, skip_bad_files)
    try:
        # datasets takes the features from the first file; when that one is skipped, from the first good one
        stream = builder(features=features if 0 in problems else None).as_streaming_dataset(split=split)
    except (OSError, ValueError) as err:
        raise cannot_open(source, err) from None
    if stream.column_names is not None and text_column not in stream.column_names:
        raise UserError(
            f"dataset {source} has no column {text_column!r} (columns: {', '.join(stream.column_names)}); "
            "set data.text_column"
        )
    return stream.select_columns([text_column]), files, frozenset(problems)


def cannot_open(source: str, err: Exception) -> UserError:
    return UserError(
        f"cannot open dataset {source}: {first_line(err)}; to read local parquet shards of the "
        "same schema, pass data.data_files='<dir>/*.parquet'"
    )


def split_strategy(stream: datasets.IterableDataset, num_readers: int, shard_by: str | None = None) -> str:
    """ "shards" or "examples" (see the module docstring for the rule)."""
    strategy = shard_by or ("shards" if stream.num_shards >= num_readers else "examples")
    if strategy not in ("shards", "examples"):
        raise UserError(f"data.shard_by must be null, 'shards' or 'examples', got {shard_by!r}")
    if strategy == "shards" and stream.num_shards < num_readers:
        raise UserError(
            f"{stream.num_shards} shards cannot be split among {num_readers} readers (ranks x workers); "
            "use data.shard_by=examples or fewer data.num_workers"
        )
    return strategy


def reader_split(
    stream: datasets.IterableDataset, reader: int, num_readers: int, shard_by: str | None = None
) -> datasets.IterableDataset:
    """Reader `reader`'s part of `stream` (see the module docstring for the rule)."""
    strategy = split_strategy(stream, num_readers, shard_by)
    return split_dataset_by_node(stream, rank=reader, world_size=num_readers, strategy=strategy)


def reader_files(reader: int, num_readers: int, num_files: int, passes: int = 0) -> list[list[int]]:
    """Reader `reader`'s files by the shards rule, each as `[file, passes, row]` at the start of a pass."""
    return [[file, passes, 0] for file in range(reader, num_files, num_readers)]


def join_files(state: ReaderState, reader: int, num_readers: int, num_files: int) -> None:
    """A state by datasets' split (fresh, or saved before files) at a pass start takes its files."""
    if state.files is None and state.position is None and state.skip == 0:
        state.files = reader_files(reader, num_readers, num_files, state.epoch)


def visiting_place(passes: int, num_files: int) -> np.ndarray:
    """Each file's place in the order of pass `passes` by files: file order, then a permutation per pass."""
    if passes == 0:
        return np.arange(num_files)
    return np.argsort(np.random.default_rng(passes).permutation(num_files))


class ReaderState:
    """Where one reader stands, taken between two windows; plain values only, for the checkpoint.

    By files, `files` holds `[file, passes, row]` for each of the reader's files: passes
    completed and the next row (held-out rows included) of the current one. By examples
    (`files` is None), `position` is datasets' state at the start of the current read of
    pass `epoch` and `skip` how many of that read's documents are already packed.
    `remainder` is the packer's unemitted tokens; `skipped` the files it skips as bad
    (`data.skip_bad_files`). `documents` counts the documents packed since the run began,
    `unique` those of them packed in their first pass (distinct documents). A plain class, not
    a dataclass, so Lightning's batch utilities pass it through untouched.
    """

    __slots__ = ("epoch", "position", "skip", "remainder", "documents", "files", "skipped", "unique")

    def __init__(
        self,
        epoch: int = 0,
        position: dict | None = None,
        skip: int = 0,
        remainder: list[int] | None = None,
        documents: int = 0,
        files: list[list[int]] | None = None,
        skipped: list[int] | None = None,
        unique: int = 0,  # absent from positions saved before it was counted
    ) -> None:
        self.epoch, self.position, self.skip = epoch, position, skip
        self.remainder = list(remainder or [])
        self.documents, self.unique = documents, unique
        self.files = None if files is None else [list(entry) for entry in files]
        self.skipped = list(skipped or [])

    def snapshot(self, remainder: list[int]) -> ReaderState:
        return ReaderState(
            self.epoch,
            self.position,
            self.skip,
            remainder,
            self.documents,
            self.files,
            self.skipped,
            self.unique,
        )

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
    Documents in `held_out` (the validation set) are skipped wherever they occur, and so are
    the files in `skip_files` (found bad at setup) and, with `skip_bad_files`, those that fail
    as they are read; `file_names` names them in messages.
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
        file_names: list[str] | None = None,
        skip_files: frozenset[int] = frozenset(),
        skip_bad_files: bool = False,
    ) -> None:
        self.stream, self.tokenizer, self.seq_len, self.batch_size = stream, tokenizer, seq_len, batch_size
        self.states, self.text_column, self.held_out, self.rotation = states, text_column, held_out, rotation
        self.rank, self.world_size, self.shard_by = rank, world_size, shard_by
        self.docs_per_read = docs_per_read
        self.file_names, self.skip_files, self.skip_bad_files = file_names, skip_files, skip_bad_files
        self.strategy = split_strategy(stream, world_size * self.num_readers, shard_by)
        if skip_files and self.strategy != "shards":
            raise UserError(
                "data.skip_bad_files skips whole files, which needs readers that read whole files: "
                f"data.shard_by=shards, with at most {stream.num_shards} readers (ranks x workers)"
            )

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
            if self.strategy == "shards":  # also where a position saved before files joins
                n = self.num_readers
                join_files(state, self.rank * n + reader, self.world_size * n, self.stream.num_shards)
            if state.files is not None:
                yield from self.file_documents(reader, state)
            yield from self.split_pass(reader, state)

    def file_documents(self, reader: int, state: ReaderState) -> Iterator[list[int]]:
        """Endlessly: the least-read of the reader's files (then the first), from its next row."""
        mine = {file for file, _, _ in state.files}
        state.skipped = sorted(set(state.skipped) | (self.skip_files & mine))
        while True:
            level = min(passes for _, passes, _ in state.files)
            place = visiting_place(level, self.stream.num_shards)
            current = sorted((entry for entry in state.files if entry[1] == level), key=lambda e: place[e[0]])
            fresh_pass, packed = all(row == 0 for _, _, row in current), 0
            for entry in current:
                first = entry[2]
                for rows in self.file_rows(entry[0], first, state):
                    texts = enumerate(rows[self.text_column], first)
                    kept = [(i, t) for i, t in texts if self.trainable(t)]
                    docs = tokenize_documents(self.tokenizer, [t for _, t in kept]) if kept else []
                    for (row, _), doc in zip(kept, docs, strict=True):
                        entry[2] = row + 1
                        state.documents += 1
                        state.unique += level == 0
                        packed += 1
                        yield doc
                    first += len(rows[self.text_column])
                entry[1], entry[2] = level + 1, 0
            if fresh_pass and packed == 0:
                self.no_documents(reader)

    def file_rows(self, file: int, first: int, state: ReaderState) -> Iterator[dict[str, list]]:
        """Batches of file `file`'s rows from row `first`; none for a skipped file. A file that fails
        to read stops the run with one line, or with `skip_bad_files` joins `state.skipped`."""
        if file in state.skipped:
            return
        stream = self.stream.shard(num_shards=self.stream.num_shards, index=file)

        def failed(err: Exception) -> None:
            name = self.file_names[file] if self.file_names else f"file {file} of the dataset"
            bad_shard(name, f"cannot read it ({first_line(err)})", self.skip_bad_files)
            state.skipped = sorted([*state.skipped, file])

        yield from read_batches(
            (stream.skip(first) if first else stream).iter(batch_size=self.docs_per_read), failed
        )

    def split_pass(self, reader: int, state: ReaderState) -> Iterator[list[int]]:
        """The rest of pass `state.epoch` of the reader's part of the stream, by datasets' split."""
        stream = self.reader_stream(reader)
        stream.set_epoch(state.epoch)
        fresh_pass = state.position is None and state.skip == 0
        if state.position is not None:
            stream.load_state_dict(state.position)
        packed = 0
        for rows in read_batches(stream.iter(batch_size=self.docs_per_read), unreadable_by_examples):
            texts = [text for text in rows[self.text_column] if self.trainable(text)]
            pending = texts[state.skip :]
            for doc in tokenize_documents(self.tokenizer, pending) if pending else []:
                state.skip += 1
                state.documents += 1
                state.unique += state.epoch == 0
                packed += 1
                yield doc
            state.position, state.skip = stream.state_dict(), 0
        if fresh_pass and packed == 0:
            self.no_documents(reader)
        state.epoch, state.position, state.skip = state.epoch + 1, None, 0

    def trainable(self, text: str | None) -> bool:
        """A row is a training document unless it is held out or has no text (a null: a
        missing document, skipped as datasets' own text pipelines drop them)."""
        return text is not None and text not in self.held_out

    def no_documents(self, reader: int) -> None:
        remedies = ["fewer data.num_workers"]
        if not self.skip_bad_files:  # readers by examples cannot skip files
            remedies.append("data.shard_by=examples")
        remedies.append(f"fewer data.val_documents (the first {len(self.held_out)} are held out)")
        raise UserError(
            f"reader {self.rank * self.num_readers + reader} of {self.world_size * self.num_readers} "
            f"(ranks x workers) got no training documents; use {', '.join(remedies)}, or a larger dataset"
        )
