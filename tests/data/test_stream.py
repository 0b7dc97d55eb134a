"""The streaming source: every document once per pass, exact resume, held-out validation, errors."""

from __future__ import annotations

import io
from itertools import islice

import datasets
import huggingface_hub
import pytest
import torch
from torch.utils.data import DataLoader

from src.data.packing import tokenize_documents
from src.data.stream import PackedStream, ReaderState, reader_split
from src.data.stream_datamodule import StreamDataModule, StreamPosition
from src.errors import UserError
from tests.data.shards import write_shards

SEQ_LEN, BATCH = 32, 2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cosmopedia")
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
    dm = datamodule(shards, num_workers)
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
    assert dm.position.consumed == 40 and dm.documents_seen > len(texts)  # past the first pass
    for doc in tokenize_documents(dm.tokenizer, texts[:3]):
        assert tuple(doc[:-1]) not in seen
    assert next(iter(dm.val_dataloader())).shape == (BATCH, SEQ_LEN + 1)


def test_resuming_with_other_workers_says_what_to_pass(shards):
    dm = datamodule(shards, num_workers=2)
    dm.load_state_dict({"ranks": [{"consumed": 4, "readers": [ReaderState().to_dict()] * 2}]})
    assert dm.start(0, 1)[0] == 4
    dm.num_workers = 3
    with pytest.raises(UserError, match=r"1 device\(s\) x 2 reader\(s\).*data.num_workers=2"):
        dm.start(0, 1)


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
    with pytest.raises(UserError, match=r"no column 'content' \(columns: prompt, text, token_length"):
        datamodule(shards, text_column="content")
