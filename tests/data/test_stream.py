"""The streaming source: every document once per pass, exact resume, held-out validation, errors."""

from __future__ import annotations

import io
from collections import Counter
from itertools import islice
from pathlib import Path

import datasets
import huggingface_hub
import pytest
import torch
from torch.utils.data import DataLoader

from src.data.packing import tokenize_documents
from src.data.stream import PackedStream, ReaderState, reader_files, reader_split
from src.data.stream_datamodule import StreamDataModule, StreamPosition
from src.errors import UserError
from tests.data.shards import write_shards

SEQ_LEN, BATCH = 32, 2


@pytest.fixture(scope="module")
def shards(module_tmp_path):
    folder = module_tmp_path
    return folder, write_shards(folder)


def datamodule(shards, num_workers: int = 0, **kwargs) -> StreamDataModule:
    folder, _ = shards
    dm = StreamDataModule(
        "HuggingFaceTB/smollm-corpus",
        SEQ_LEN,
        BATCH,
        data_files=str(folder / "*.parquet"),
        val_documents=3,
        num_workers=num_workers,
        docs_per_read=3,  # small reads, so positions fall inside them
        **kwargs,
    )
    dm.setup()
    return dm


def packed(dm: StreamDataModule, states: list[ReaderState], rank: int = 0, world: int = 1, rotation: int = 0):
    """The training dataset of rank `rank` of `world`, as the DataModule builds it."""
    return PackedStream(
        dm.stream,
        dm.tokenizer,
        SEQ_LEN,
        BATCH,
        states,
        text_column=dm.text_column,
        held_out=dm.held_out,
        rank=rank,
        world_size=world,
        rotation=rotation,
        shard_by=dm.shard_by,
        docs_per_read=dm.docs_per_read,
        file_names=dm.files,
        skip_files=dm.skip_files,
        skip_bad_files=dm.skip_bad_files,
    )


def split_documents(tokens: list[int], eos: int) -> list[tuple[int, ...]]:
    docs, start = [], 0
    for i, token in enumerate(tokens):
        if token == eos:
            docs.append(tuple(tokens[start:i]))
            start = i + 1
    return docs


@pytest.mark.parametrize(
    ("world", "num_workers", "shard_by"),
    [(1, 1, None), (1, 2, None), (3, 1, None), (2, 2, None), (2, 2, "examples")],
)
def test_every_document_is_trained_on_exactly_once_per_pass(shards, world, num_workers, shard_by):
    """Rebuild each reader's token stream from its windows; its first pass holds its share of the
    documents, and the shares of all readers of all ranks are the training documents, once each.
    4 files on 3 ranks: one rank reads 2 files; 4 readers by examples: every 4th document."""
    dm = datamodule(shards, num_workers, shard_by=shard_by)
    _, texts = shards
    readers = dm.num_readers
    streams: dict[int, list[int]] = {}
    for rank in range(world):
        dataset = packed(dm, [ReaderState() for _ in range(readers)], rank, world)
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        for i, batch in enumerate(islice(loader, 30 * readers)):  # two passes and more for every reader
            stream = streams.setdefault(rank * readers + i % readers, [])
            for window in batch["tokens"].tolist():
                assert len(window) == SEQ_LEN + 1
                stream.extend(window[1:] if stream else window)  # consecutive windows share a token

    eos = dm.tokenizer.eos_token_id
    first_passes = []
    for reader, stream in streams.items():
        part = reader_split(dm.stream, reader, world * readers, shard_by)
        share = [t for row in part if (t := row["text"]) not in dm.held_out]
        docs = split_documents(stream, eos)
        assert len(docs) > len(share) > 0
        first_passes += docs[: len(share)]
    training = [t for t in texts if t not in dm.held_out]
    expected = [tuple(doc[:-1]) for doc in tokenize_documents(dm.tokenizer, training)]
    assert len(training) == len(texts) - 4  # the 3 held out, and the repeat of the first one
    assert sorted(first_passes) == sorted(expected)


def save_and_load(states: tuple[ReaderState, ...]) -> list[ReaderState]:
    """Through torch.save and a weights-only load, as in a checkpoint: plain values only."""
    buffer = io.BytesIO()
    torch.save([s.to_dict() for s in states], buffer)
    buffer.seek(0)
    return [ReaderState.from_dict(s) for s in torch.load(buffer, weights_only=True)]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resumed_twice_the_windows_are_those_of_an_uninterrupted_run(shards, num_workers):
    assert_resumes_exactly(datamodule(shards, num_workers), num_workers)


def assert_resumes_exactly(dm: StreamDataModule, num_workers: int) -> list[ReaderState]:
    """21 batches straight equal 5 + 7 + 9 batches, each part resumed from a saved position;
    returns the final position."""
    readers = dm.num_readers
    fresh = [ReaderState() for _ in range(readers)]
    total = 21  # crosses the end of every reader's first pass
    straight = DataLoader(packed(dm, fresh), batch_size=None, num_workers=num_workers)
    expected = [batch["tokens"] for batch in islice(straight, total)]

    served, consumed, states = [], 0, fresh
    for length in (5, 7, total - 12):
        position = StreamPosition(states, consumed, keep=3)
        dataset = packed(dm, states, rotation=consumed % readers)
        loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
        # One batch past the checkpoint is consumed too, as on a save in mid-accumulation.
        for i, batch in enumerate(islice(loader, length + 1)):
            position.record(batch["state"])
            if i < length:
                served.append(batch["tokens"])
        consumed += length
        states = save_and_load(position.after(consumed))
    assert len(served) == total
    for i, (a, b) in enumerate(zip(expected, served, strict=True)):
        assert torch.equal(a, b), f"batch {i}"
    return states


def test_validation_is_the_held_out_documents_and_training_never_sees_them(shards):
    dm = datamodule(shards)
    _, texts = shards
    assert dm.held_out == frozenset(texts[:3])
    held_out_tokens = [t for doc in tokenize_documents(dm.tokenizer, texts[:3]) for t in doc]
    assert dm.val_tokens.tolist() == held_out_tokens
    loader = dm.train_dataloader()
    training = [dm.on_before_batch_transfer(batch, 0) for batch in islice(loader, 40)]
    stream = [t for batch in training for window in batch.tolist() for t in window[1:]]
    seen = set(split_documents(stream, dm.tokenizer.eos_token_id))
    counts = dm.rank_counts()
    assert dm.position.consumed == 40 and counts["documents_seen"] > len(texts)  # past the first pass
    assert counts["unique_documents"] == len([t for t in texts if t not in dm.held_out])  # each once
    for doc in tokenize_documents(dm.tokenizer, texts[:3]):
        assert tuple(doc[:-1]) not in seen
    windows, counted = next(iter(dm.val_dataloader()))
    assert windows.shape == (BATCH, SEQ_LEN + 1) and counted.tolist() == [True] * BATCH


def test_resuming_by_examples_with_other_readers_says_what_to_pass(shards):
    dm = datamodule(shards, num_workers=2, shard_by="examples")
    by_examples = [ReaderState(position={"epoch": 0}).to_dict()] * 2
    dm.load_state_dict({"ranks": [{"consumed": 4, "readers": by_examples}]})
    assert len(dm.start(0, 1, 4)) == 2
    dm.num_workers = 3
    with pytest.raises(UserError, match=r"by examples.*resume with as many devices x data.num_workers"):
        dm.start(0, 1, 4)


def test_resuming_on_other_files_or_by_examples_with_other_readers_is_a_user_error(shards):
    dm = datamodule(shards, num_workers=2)

    def saved_by_two_ranks(num_files: int) -> dict:
        readers = [ReaderState(files=reader_files(r, 2, num_files)).to_dict() for r in range(2)]
        return {"ranks": [{"consumed": 4, "readers": [state]} for state in readers]}

    dm.load_state_dict(saved_by_two_ranks(3))
    with pytest.raises(UserError, match=r"covers 3 file\(s\), the dataset has 4; resume on the same"):
        dm.start(0, 1, 4)
    dm.load_state_dict(saved_by_two_ranks(4))
    assert [s.files for s in dm.start(0, 1, 4)] == [[[0, 0, 0], [2, 0, 0]], [[1, 0, 0], [3, 0, 0]]]
    dm.num_workers = 5  # more readers than files: by examples
    with pytest.raises(UserError, match=r"5 would split the stream by examples.*at most 4 readers"):
        dm.start(0, 1, 4)


def test_resuming_with_the_checkpoints_readers_on_other_files_is_a_user_error(shards):
    """The same reader count takes the saved states as they are: the files must be the same."""
    dm = datamodule(shards, num_workers=2)
    names = [Path(file).name for file in dm.files]
    readers = [ReaderState(files=reader_files(r, 2, 3)).to_dict() for r in range(2)]
    dm.load_state_dict({"ranks": [{"consumed": 4, "readers": readers}]})  # a checkpoint without names
    with pytest.raises(UserError, match=r"covers 3 file\(s\), the dataset has 4; resume on the same"):
        dm.start(0, 1, 4)
    readers = [ReaderState(files=reader_files(r, 2, 4)).to_dict() for r in range(2)]
    for files, message in [
        (names[:3], r"position is in 3 file\(s\), this run reads 4; resume on the same data.data_files"),
        (["other.parquet", *names[1:]], rf"\(file 0 is other.parquet there, {names[0]} here\)"),
    ]:
        dm.load_state_dict({"ranks": [{"consumed": 4, "readers": readers}], "files": files})
        with pytest.raises(UserError, match=message):
            dm.start(0, 1, 4)
    dm.load_state_dict({"ranks": [{"consumed": 4, "readers": readers}], "files": names})
    assert [s.files for s in dm.start(0, 1, 4)] == [[[0, 0, 0], [2, 0, 0]], [[1, 0, 0], [3, 0, 0]]]


def test_resuming_with_other_validation_documents_is_a_user_error(shards):
    """More held-out documents would validate on trained ones, fewer would train on validated ones."""
    dm = datamodule(shards, num_workers=2)
    readers = [ReaderState(files=reader_files(r, 2, 4)).to_dict() for r in range(2)]
    saved = {"ranks": [{"consumed": 4, "readers": readers}], "files": dm.file_names()}
    for val_documents in (2, 5):
        dm.load_state_dict({**saved, "val_documents": val_documents})
        with pytest.raises(
            UserError,
            match=rf"held out the first {val_documents} documents for validation, "
            rf"this run 3: .*resume with data.val_documents={val_documents}$",
        ):
            dm.start(0, 1, 4)
    for same in ({**saved, "val_documents": 3}, saved):  # saved before val_documents was stored: not checked
        dm.load_state_dict(same)
        assert len(dm.start(0, 1, 4)) == 2


def test_a_position_saved_before_files_continues_its_pass_then_reads_by_files(shards):
    """A mid-pass position of datasets' split (checkpoints before elastic resume) yields the
    documents that followed it, into the next pass."""
    dm = datamodule(shards)
    dataset = packed(dm, [ReaderState()], rank=1, world=2)
    fresh = list(islice(dataset.documents(0, ReaderState()), 24))  # reader 1 of 2: about 12 per pass
    split = reader_split(dm.stream, 1, 2)
    first_read = next(iter(split.iter(batch_size=dm.docs_per_read)))["text"]
    legacy = ReaderState.from_dict({"epoch": 0, "position": split.state_dict(), "skip": 1})
    packed_before = len([t for t in first_read if t not in dm.held_out]) + 1
    assert list(islice(dataset.documents(0, legacy), 24 - packed_before)) == fresh[packed_before:]


def segment_tokens(initial: list[int], windows: list[list[int]], final: list[int]) -> list[int]:
    """One reader's tokens between two checkpoints: its initial remainder, then what it read.

    Consecutive windows share a token, and the final remainder starts with the last window's last token.
    """
    if not windows:
        assert final == initial
        return list(initial)
    tokens = list(windows[0])
    for window in windows[1:]:
        tokens += window[1:]
    assert tokens[-1] == final[0]
    tokens += final[1:]
    assert tokens[: len(initial)] == initial
    return tokens


def test_two_then_one_then_three_readers_pack_every_document_once_per_pass_of_its_file(shards):
    """2 ranks x 1 reader, then 1 x 1, then 1 rank x 3 workers, each handed the last one's
    checkpoint. What the readers packed is, for every file, its completed passes and its prefix
    (no document repeated or skipped at a switch), and every token they read is a target
    exactly once, except each run-starting reader's first and the last remainders' tails."""
    _, texts = shards
    eos = None
    saved, consumed = None, 0
    documents: Counter = Counter()
    fed = targets = fresh = 0
    for world, num_workers, length in ((2, 0, 4), (1, 0, 5), (1, 3, 9)):
        dm = datamodule(shards, num_workers)
        eos = dm.tokenizer.eos_token_id
        readers = dm.num_readers
        if saved is not None:
            dm.load_state_dict({"ranks": saved})
        saved = []
        for rank in range(world):
            states = dm.start(rank, world, consumed)
            position = StreamPosition(states, consumed, keep=2)
            dataset = packed(dm, states, rank, world, rotation=consumed % readers)
            windows: list[list[list[int]]] = [[] for _ in range(readers)]
            loader = DataLoader(dataset, batch_size=None, num_workers=num_workers)
            for i, batch in enumerate(islice(loader, length + 1)):  # one past the checkpoint, as in training
                position.record(batch["state"])
                if i < length:
                    windows[(consumed + i) % readers] += batch["tokens"].tolist()
            finals = position.after(consumed + length)
            for initial, final, mine in zip(states, finals, windows, strict=True):
                tokens = segment_tokens(initial.remainder, mine, final.remainder)
                read = tokens[len(initial.remainder) :]
                assert read.count(eos) == len(split_documents(read, eos)) and (not read or read[-1] == eos)
                documents.update(split_documents(read, eos))
                fed, targets = fed + len(read), targets + len(mine) * SEQ_LEN
                fresh += bool(read) and not initial.remainder
            saved.append({"consumed": consumed + length, "readers": [s.to_dict() for s in finals]})
        consumed += length

    last = [ReaderState.from_dict(s) for rank in saved for s in rank["readers"]]
    tails = sum(len(s.remainder) - 1 for s in last if s.remainder)
    assert targets + tails + fresh == fed
    files = sorted(entry for s in last for entry in s.files)
    sizes = (7, 5, 9, 7)  # write_shards' files; the last one repeats the first document
    expected: Counter = Counter()
    for (file, passes, row), start in zip(files, (0, 7, 12, 21), strict=True):
        rows = texts[start : start + sizes[file]]
        for times, part in ((passes, rows), (1, rows[:row])):
            kept = [t for t in part if t not in dm.held_out] * times
            docs = tokenize_documents(dm.tokenizer, kept) if kept else []
            expected.update(tuple(doc[:-1]) for doc in docs)
    assert max(p for _, p, _ in files) >= 1 and any(row for _, _, row in files)  # past a pass, mid-file
    assert documents == expected


def test_unreachable_hub_is_a_one_line_error_naming_the_dataset(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    dm = StreamDataModule("HuggingFaceTB/smollm-corpus", SEQ_LEN, BATCH, name="cosmopedia-v2")
    with pytest.raises(
        UserError, match=r"HuggingFaceTB/smollm-corpus.*data.data_files='<dir>/\*.parquet'"
    ) as info:
        dm.setup()
    assert "\n" not in str(info.value)


def test_missing_shards_or_column_are_user_errors(tmp_path, shards):
    missing = StreamDataModule("x", SEQ_LEN, BATCH, data_files=str(tmp_path / "none" / "*.parquet"))
    with pytest.raises(UserError, match="cannot open dataset"):
        missing.setup()
    folder, _ = shards
    a_folder = StreamDataModule("x", SEQ_LEN, BATCH, data_files=f"{folder}/")
    with pytest.raises(
        UserError, match=rf"is a folder; pass a glob of its shards, data.data_files='{folder}/\*.parquet'"
    ):
        a_folder.setup()
    with pytest.raises(UserError, match=r"no column 'content' \(columns: prompt, text, token_length"):
        datamodule(shards, text_column="content")


def test_a_text_file_as_the_streams_path_says_to_choose_the_text_data_group(tmp_path):
    """`ckpt_path=<a streamed run's> data.path=input.txt` replays the stream's group, where
    `path` names a hub dataset, unused beside data_files: the file would be ignored."""
    text = tmp_path / "input.txt"
    text.write_text("some text")
    with pytest.raises(UserError, match=rf"data.path={text} is a file, .*choose data=shakespeare data.path="):
        StreamDataModule(str(text), SEQ_LEN, BATCH, data_files=str(tmp_path / "*.parquet"))
