"""Parquet shards that cannot be trained on: one error line naming the file, or skipped by choice.

A shard is bad when its bytes are not parquet (truncated, foreign), when its text column is
missing or not text, or when its columns differ from the first shard's (datasets casts every
shard to the first one's columns and fails on the others). Local shards are checked from their
footers when the DataModule is set up (one without rows is left out: nothing to read); any
shard, local or remote, whose reading fails later is caught when a reader opens it. With
`data.skip_bad_files=true` a bad shard is logged and skipped; each reader records the files it
skipped in its state, so a continuation skips the same files and its windows equal those of an
uninterrupted run. A row whose text is null is no document: readers skip it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from src.errors import UserError, first_line

log = logging.getLogger(__name__)

# What reading a bad shard raises: pyarrow's errors, OSError (a page header that cannot be
# decoded), ValueError (datasets' CastError on other columns). UserError is a ValueError too:
# callers re-raise it.
READ_ERRORS = (pa.ArrowException, OSError, ValueError)
SKIP_HINT = "fix or remove the file, or pass data.skip_bad_files=true to train without it"


def shard_problem(path: str, text_column: str, reference: pa.Schema | None) -> str | None:
    """Why the shard at `path` cannot be read as the first good shard `reference` was, or None."""
    try:
        schema = pq.read_schema(path)
    except READ_ERRORS as err:
        return f"not a readable parquet file ({first_line(err)})"
    if text_column not in schema.names:
        return f"no column {text_column!r} (columns: {', '.join(schema.names)}); set data.text_column"
    kind = schema.field(text_column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return f"column {text_column!r} holds {kind}, not text"
    if reference is not None and sorted(schema.names) != sorted(reference.names):
        columns, expected = ", ".join(schema.names), ", ".join(reference.names)
        return f"its columns ({columns}) differ from the first shard's ({expected})"
    return None


def find_bad_shards(files: list[str], text_column: str) -> tuple[dict[int, str], datasets.Features | None]:
    """The local shards' problems by file index (a footer read each), and the features of the first
    good shard: datasets infers them from the first file, which may be a bad one."""
    problems: dict[int, str] = {}
    reference: pa.Schema | None = None
    for index, path in enumerate(files):
        if not os.path.isfile(path):  # a remote shard: checked when it is read
            continue
        problem = shard_problem(path, text_column, reference)
        if problem is not None:
            problems[index] = problem
        elif reference is None:
            reference = pq.read_schema(path)
    return problems, None if reference is None else datasets.Features.from_arrow_schema(reference)


def without_empty_shards(files: list[str]) -> list[str]:
    """`files` less the local shards without rows (from their footers): nothing to read there,
    and datasets fails on them. (A file whose footer cannot be read stays: `find_bad_shards`
    names it.)"""
    kept = []
    for path in files:
        try:
            empty = os.path.isfile(path) and pq.read_metadata(path).num_rows == 0
        except READ_ERRORS:
            empty = False
        if empty:
            log.info(f"{path} has no rows: nothing to read there")
        else:
            kept.append(path)
    return kept


def bad_shard(name: str, problem: str, skip: bool) -> None:
    """Stop with one line naming the shard, or log that training goes on without it."""
    if not skip:
        raise UserError(f"{name}: {problem}; {SKIP_HINT}")
    log.warning(f"skipping {name}: {problem} (data.skip_bad_files=true)")


def read_batches(
    batches: Iterator[dict[str, list]], failed: Callable[[Exception], None]
) -> Iterator[dict[str, list]]:
    """`batches` until they end, or until reading fails: then `failed(error)` raises or records it."""
    while True:
        try:
            rows = next(batches, None)
        except UserError:
            raise
        except READ_ERRORS as err:
            failed(err)
            return
        if rows is None:
            return
        yield rows


def unreadable_by_examples(err: Exception) -> None:
    """Readers by examples read from every file at once: they can neither name nor skip the bad one."""
    raise UserError(
        f"a parquet shard of the stream cannot be read ({first_line(err)}); read whole files per reader "
        "(data.shard_by=shards) to have it named, and skipped with data.skip_bad_files=true"
    )
