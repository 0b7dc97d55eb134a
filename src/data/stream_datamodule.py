"""The DataModule for a streamed corpus: held-out documents to validate on, resumable training batches."""

from __future__ import annotations

import os
from collections import deque
from itertools import chain, islice
from pathlib import PurePosixPath
from typing import Any

import datasets
import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader

from src.data.bad_shards import READ_ERRORS, bad_shard
from src.data.base import DataSize, WindowDataModule
from src.data.packing import token_dtype, tokenize_documents
from src.data.reshard import check_covers, reshard
from src.data.stream import PackedStream, ReaderState, join_files, open_stream, split_strategy
from src.data.tokenizer import load_tokenizer
from src.errors import UserError, first_line


class StreamPosition:
    """The rank's reader states after each consumed batch, kept until a checkpoint may ask for them.

    Batch `i` of the rank came from reader `i % R`, so the position after it is every reader's
    latest state. A checkpoint at optimizer step `s` needs the position after batch
    `s * accumulation`, however far the loader prefetched and however much of step `s + 1`
    the loop has consumed (a checkpoint written on an exception), so `keep` covers one step.
    """

    def __init__(self, states: list[ReaderState], consumed: int, keep: int) -> None:
        self.latest, self.consumed = list(states), consumed
        self.history: deque[tuple[int, tuple[ReaderState, ...]]] = deque([(consumed, tuple(states))], keep)

    def record(self, state: ReaderState) -> None:
        """The batch just handed to the training step came with `state`."""
        self.latest[self.consumed % len(self.latest)] = state
        self.consumed += 1
        self.history.append((self.consumed, tuple(self.latest)))

    def after(self, consumed: int) -> tuple[ReaderState, ...]:
        for count, states in self.history:
            if count == consumed:
                return states
        raise RuntimeError(f"no data position after batch {consumed}; kept {[c for c, _ in self.history]}")

    def documents(self) -> tuple[int, int]:
        """Documents packed by this rank's readers so far, and how many of them were distinct."""
        return sum(s.documents for s in self.latest), sum(s.unique for s in self.latest)


def gather_from_ranks(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (every rank saves a checkpoint; only rank 0 writes it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class StreamDataModule(WindowDataModule):
    """A Hub dataset's text column (cosmopedia-v2), or local parquet shards, streamed and packed.

    Validation is the first `val_documents` documents of the stream (file order), tokenized
    once; training skips every document whose text is one of them, wherever it occurs, so
    the two never overlap. The training position (every reader's state on every rank after
    the last batch of the last optimizer step) is this module's `state_dict`, stored in the
    checkpoint; a continuation may change devices and `num_workers` when both split by files.
    """

    def __init__(
        self,
        path: str,
        seq_len: int,
        batch_size: int,
        name: str | None = None,
        split: str = "train",
        data_files: str | list[str] | None = None,
        text_column: str = "text",
        val_documents: int = 1000,
        num_workers: int = 0,
        tokenizer: str | None = None,
        shard_by: str | None = None,
        docs_per_read: int = 256,
        skip_bad_files: bool = False,
    ) -> None:
        super().__init__(seq_len, batch_size, num_workers)
        if val_documents <= 0 or docs_per_read <= 0:
            raise UserError(
                f"data.val_documents ({val_documents}) and data.docs_per_read ({docs_per_read}) "
                "must be positive"
            )
        if os.path.isfile(path):  # e.g. data.path=input.txt on a streamed run's continuation
            raise UserError(
                f"data.path={path} is a file, and this data group streams a hub dataset or parquet "
                "shards (data.data_files); for a text file choose data=shakespeare data.path=<file>"
            )
        self.path, self.name, self.split, self.data_files = path, name, split, data_files
        self.text_column, self.val_documents = text_column, val_documents
        self.tokenizer_name, self.shard_by, self.docs_per_read = tokenizer, shard_by, docs_per_read
        self.skip_bad_files = skip_bad_files
        self.stream: datasets.IterableDataset | None = None
        self.files: list[str] = []
        self.skip_files: frozenset[int] = frozenset()
        self.held_out: frozenset[str] = frozenset()
        self.position: StreamPosition | None = None
        self.restored: list[dict[str, Any]] | None = None
        self.restored_files: list[str] | None = None  # the names of the files the position is in
        self.restored_val_documents: int | None = None  # the documents the checkpoint's run held out
        self._consumed_at = (0, 0)  # (optimizer step, batches each rank had consumed by then)

    def setup(self, stage: str | None = None) -> None:
        if self.stream is not None:
            return
        self.tokenizer = load_tokenizer(self.tokenizer_name)
        self.stream, self.files, self.skip_files = open_stream(
            self.path, self.name, self.split, self.data_files, self.text_column, self.skip_bad_files
        )
        texts = self.validation_texts()
        self.held_out = frozenset(texts)
        docs = tokenize_documents(self.tokenizer, texts) if texts else []
        self.val_tokens = np.fromiter(chain.from_iterable(docs), dtype=token_dtype(len(self.tokenizer)))
        self.check_holds_a_window(
            self.val_tokens,
            f"the validation set ({len(texts)} documents)",
            "raise data.val_documents or lower data.seq_len",
        )

    def validation_texts(self) -> list[str]:
        """The first `val_documents` documents (rows with text) of the good files, read file by file so that a
        file failing mid-read (a damaged page the footer check cannot see) is named, and with
        data.skip_bad_files skipped here and in training alike."""
        texts: list[str] = []
        num_files = self.stream.num_shards
        for index in range(num_files):
            if len(texts) == self.val_documents:
                break
            if index in self.skip_files:
                continue
            rows = self.stream.shard(num_shards=num_files, index=index)
            try:
                documents = (row[self.text_column] for row in rows if row[self.text_column] is not None)
                texts += islice(documents, self.val_documents - len(texts))
            except READ_ERRORS as err:
                bad_shard(self.files[index], f"cannot read it ({first_line(err)})", self.skip_bad_files)
                self.skip_files = self.skip_files | {index}
        return texts

    def data_size(self) -> DataSize:
        """A stream's length is not known before it is read: the plan says "epochs unknown"."""
        return DataSize(str(self.data_files or f"{self.path} ({self.name})"), None)

    @property
    def num_readers(self) -> int:
        return max(1, self.num_workers)

    def batches_consumed(self) -> int:
        """Batches each rank used for the optimizer steps taken so far: the checkpoint's count at
        its step, plus this run's steps at this run's accumulation, which a continuation may change
        (as src/data/text_datamodule.py counts windows)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        step, consumed = self._consumed_at
        return consumed + (trainer.global_step - step) * trainer.accumulate_grad_batches

    def start(self, rank: int, world_size: int, consumed: int) -> list[ReaderState]:
        """This rank's reader states after `consumed` batches: restored, handed on, or at the beginning.

        With the checkpoint's devices and readers, each reader continues its own state; with
        others, `reshard` hands the position on (by files only; see src/data/stream.py).
        """
        if self.restored is None:
            return [ReaderState() for _ in range(self.num_readers)]
        self.check_same_files()
        self.check_same_validation()
        saved = [ReaderState.from_dict(s) for r in self.restored for s in r["readers"]]
        first = rank * self.num_readers
        if len(self.restored) == world_size and len(self.restored[rank]["readers"]) == self.num_readers:
            if all(state.files is not None for state in saved):
                check_covers(saved, self.stream.num_shards)  # checkpoints without file names too
            if self.restored[rank]["consumed"] != consumed:
                saved_at = self.restored[rank]["consumed"]
                raise RuntimeError(f"data position after {saved_at} batches, trainer after {consumed}")
            return saved[first : first + self.num_readers]
        for g, state in enumerate(saved):  # a reader that has not served a batch yet has a fresh state
            join_files(state, g, len(saved), self.stream.num_shards)
        if any(state.files is None for state in saved):
            raise UserError(
                f"the checkpoint's data position ({len(saved)} reader(s)) is by examples, or was saved "
                "before elastic resume in mid-pass; resume with as many devices x data.num_workers"
            )
        num_readers = world_size * self.num_readers
        if split_strategy(self.stream, num_readers, self.shard_by) != "shards":
            raise UserError(
                f"the checkpoint's data position is for {len(saved)} reader(s) (devices x workers); "
                f"{num_readers} would split the stream by examples, which cannot continue it: resume with "
                f"at most {self.stream.num_shards} readers and data.shard_by=null or shards"
            )
        mine = range(first, first + self.num_readers)
        return [reshard(saved, g, num_readers, self.stream.num_shards) for g in mine]

    def file_names(self) -> list[str]:
        """The stream's files by name, in order: what a checkpoint's position records it is in."""
        return [PurePosixPath(file).name for file in self.files]

    def check_same_files(self) -> None:
        """A position is rows of files, by their order: on other files (another data.data_files,
        files added or removed) it would continue silently from the wrong rows, or fail."""
        saved, names = self.restored_files, self.file_names()
        if saved is None or saved == names:
            return
        problem = f"the checkpoint's data position is in {len(saved)} file(s), this run reads {len(names)}"
        for i, (there, here) in enumerate(zip(saved, names, strict=False)):
            if there != here:
                problem += f" (file {i} is {there} there, {here} here)"
                break
        raise UserError(f"{problem}; resume on the same data.data_files (or dataset) as the checkpoint")

    def check_same_validation(self) -> None:
        """The held-out documents are the stream's first `val_documents`: more of them would
        validate on documents the checkpoint's run trained on, fewer would train on those it
        validated on."""
        saved = self.restored_val_documents
        if saved is not None and saved != self.val_documents:
            raise UserError(
                f"the checkpoint's run held out the first {saved} documents for validation, this run "
                f"{self.val_documents}: its validation would overlap training; resume with "
                f"data.val_documents={saved}"
            )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        accumulation = trainer.accumulate_grad_batches if trainer else 1
        consumed = self.batches_consumed()
        states = self.start(rank, world_size, consumed)
        self.position = StreamPosition(states, consumed, keep=accumulation + 1)
        if self.num_workers:  # the workers are the parallelism; keep each tokenizer on one thread
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        dataset = PackedStream(
            self.stream,
            self.tokenizer,
            self.seq_len,
            self.batch_size,
            states,
            text_column=self.text_column,
            held_out=self.held_out,
            rank=rank,
            world_size=world_size,
            rotation=consumed % self.num_readers,
            shard_by=self.shard_by,
            docs_per_read=self.docs_per_read,
            file_names=self.files,
            skip_files=self.skip_files,
            skip_bad_files=self.skip_bad_files,
        )
        return self.loader(dataset, batch_size=None)

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Runs as the loop takes a batch to train on (not when the loader prefetched it)."""
        if isinstance(batch, dict):  # a training batch: keep its reader's state, pass the tokens on
            self.position.record(batch["state"])
            return batch["tokens"]
        return batch

    def rank_counts(self) -> dict[str, int]:
        """Documents this rank has packed into its training windows so far, and the distinct ones
        among them: those packed in their first pass (host-side counters)."""
        seen, unique = self.position.documents() if self.position else (0, 0)
        return {"documents_seen": seen, "unique_documents": unique}

    def state_dict(self) -> dict[str, Any]:
        if self.position is None:
            return {}
        consumed = self.batches_consumed()
        mine = {"consumed": consumed, "readers": [s.to_dict() for s in self.position.after(consumed)]}
        return {
            "ranks": gather_from_ranks(mine),
            "files": self.file_names(),
            "step": self.trainer.global_step,
            "val_documents": self.val_documents,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.restored = state_dict["ranks"]
        self.restored_files = state_dict.get("files")  # absent before 2026-12-03
        self.restored_val_documents = state_dict.get("val_documents")  # absent before 2026-12-03
        if "step" in state_dict:  # else its steps had today's accumulation, as was then required
            self._consumed_at = (state_dict["step"], self.restored[0]["consumed"])  # the same on every rank
