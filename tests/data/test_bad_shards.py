"""Bad parquet shards: one line naming the file, or skipped (data.skip_bad_files) with exact resume."""

from __future__ import annotations

import logging
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from src.data.stream import ReaderState
from src.data.stream_datamodule import StreamDataModule
from src.errors import UserError
from tests.data.shards import corrupt_second_row_group, write_shards
from tests.data.test_stream import assert_resumes_exactly, datamodule, packed

SIZES = (7, 5, 9, 6)


def shard(folder: Path, index: int) -> Path:
    return folder / f"train-{index:05d}-of-{len(SIZES):05d}.parquet"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def folder(tmp_path) -> tuple[Path, list[str]]:
    return tmp_path, write_shards(tmp_path, SIZES)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (truncate, "not a readable parquet file (Parquet magic bytes not found in footer"),
        (
            lambda path: pq.write_table(pa.table({"text": ["a b", "c d"], "other": [1, 2]}), path),
            "its columns (text, other) differ from the first shard's (prompt, text, token_length",
        ),
        (
            lambda path: pq.write_table(pa.table({"text": [1, 2]}), path),
            "column 'text' holds int64, not text",
        ),
    ],
)
def test_a_bad_shard_is_one_line_naming_it_at_setup(folder, damage, message):
    tmp, _ = folder
    damage(shard(tmp, 2))
    with pytest.raises(UserError) as info:
        datamodule((tmp, None))
    error = str(info.value)
    assert error.startswith(f"{shard(tmp, 2)}: ") and message in error and "\n" not in error
    assert error.endswith("fix or remove the file, or pass data.skip_bad_files=true to train without it")


@pytest.mark.parametrize("bad", [0, 2])
def test_skip_bad_files_trains_on_the_others_and_resumes_exactly(folder, caplog, bad):
    """The first file too: datasets would take the stream's columns from it."""
    tmp, texts = folder
    truncate(shard(tmp, bad))
    with caplog.at_level(logging.WARNING):
        dm = datamodule((tmp, None), skip_bad_files=True)
    assert f"skipping {shard(tmp, bad)}: not a readable parquet file" in caplog.text
    start = sum(SIZES[:bad])
    good = texts[:start] + texts[start + SIZES[bad] :]
    assert dm.held_out == frozenset(good[:3]) and dm.skip_files == {bad}
    final = assert_resumes_exactly(dm, num_workers=0)
    assert final[0].skipped == [bad]


def test_a_shard_failing_mid_read_stops_with_the_continue_hint_or_is_skipped_and_recorded(folder):
    tmp, _ = folder
    corrupt_second_row_group(shard(tmp, 2))
    dm = datamodule((tmp, None))  # the footer is fine: setup passes
    with pytest.raises(
        UserError, match=r"train-00002-of-00004.parquet: cannot read it .*skip_bad_files=true"
    ):
        list(islice(packed(dm, [ReaderState()]), 40))
    dm = datamodule((tmp, None), skip_bad_files=True)
    final = assert_resumes_exactly(dm, num_workers=0)
    assert final[0].skipped == [2] and dm.skip_files == frozenset()


def test_readers_by_examples_cannot_skip_a_shard_and_say_to_read_by_files(folder):
    tmp, _ = folder
    corrupt_second_row_group(shard(tmp, 2))
    dm = datamodule((tmp, None), shard_by="examples")
    with pytest.raises(
        UserError, match=r"a parquet shard of the stream cannot be read .*data.shard_by=shards"
    ):
        list(islice(packed(dm, [ReaderState()]), 40))
    truncate(shard(tmp, 1))
    dm = datamodule((tmp, None), shard_by="examples", skip_bad_files=True)
    with pytest.raises(UserError, match="data.skip_bad_files skips whole files, which needs"):
        packed(dm, [ReaderState()])


def test_a_shard_failing_mid_read_among_the_validation_documents_is_named_or_skipped(folder):
    """A damaged page in the first file: setting up the validation set reads it first."""
    tmp, texts = folder
    corrupt_second_row_group(shard(tmp, 0))

    def validation_of_all_but_one(**kwargs) -> StreamDataModule:
        dm = StreamDataModule(
            "local", 8, 2, data_files=str(tmp / "*.parquet"), val_documents=sum(SIZES) - 1, **kwargs
        )
        dm.setup()
        return dm

    with pytest.raises(
        UserError, match=r"train-00000-of-00004.parquet: cannot read it .*skip_bad_files=true"
    ):
        validation_of_all_but_one()
    dm = validation_of_all_but_one(skip_bad_files=True)
    assert dm.skip_files == {0}
    assert frozenset(texts[SIZES[0] :]) <= dm.held_out <= frozenset(texts)


def test_rows_without_text_are_no_documents_for_validation_or_training(tmp_path):
    """A null text (a missing document) is skipped: it neither counts among the held-out
    documents nor reaches the tokenizer (which would fail on it in a reader)."""
    texts = ["Document zero about the cell.", None, "Document two about water.", "Document three.", None]
    texts += [f"Document {i} where light makes sugar in the leaf." for i in range(5, 40)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "train-00000-of-00001.parquet", row_group_size=4)
    dm = StreamDataModule(
        "local", 8, 2, data_files=str(tmp_path / "*.parquet"), val_documents=3, docs_per_read=3
    )
    dm.setup()
    assert dm.held_out == frozenset([texts[0], texts[2], texts[3]])
    batches = list(islice(packed(dm, [ReaderState()]), 60))  # past the end of the first pass
    assert batches[-1]["state"].unique == len(texts) - 2 - 3  # each other row once


def test_a_shard_without_rows_is_left_out_and_all_empty_is_one_line(folder, caplog):
    tmp, texts = folder
    empty = tmp / "train-00001-of-00004.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), empty)
    with caplog.at_level(logging.INFO):
        dm = datamodule((tmp, None))
    assert f"{empty} has no rows" in caplog.text and str(empty) not in dm.files and len(dm.files) == 3
    assert dm.held_out == frozenset(texts[:3])
    batches = list(islice(packed(dm, [ReaderState()]), 40))  # past the end of the first pass
    assert batches[-1]["state"].unique == len(texts) - SIZES[1] - 3 - 1  # the last file repeats the first
    for index in range(len(SIZES)):
        pq.write_table(pa.table({"text": pa.array([], pa.string())}), shard(tmp, index))
    with pytest.raises(UserError, match=r"every shard of .* has no rows; point data.data_files at shards"):
        datamodule((tmp, None))


def test_a_reader_without_documents_names_the_remedies_that_apply(folder):
    tmp, _ = folder
    dm = StreamDataModule("local", 8, 2, data_files=str(tmp / "*.parquet"), val_documents=sum(SIZES))
    dm.setup()
    with pytest.raises(
        UserError,
        match=r"got no training documents; use fewer data.num_workers, "
        r"data.shard_by=examples, fewer data.val_documents \(the first 27 are held out\)",
    ):
        list(islice(packed(dm, [ReaderState()]), 1))
