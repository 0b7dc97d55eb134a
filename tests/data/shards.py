"""Parquet shards with cosmopedia-v2's schema, written by the tests themselves."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

WORDS = "the cell uses light to make sugar while water and carbon dioxide enter through small pores".split()


def document(index: int, rng: random.Random) -> str:
    """A unique text; some are longer than a 32-token window, some a few tokens."""
    words = rng.choice([2, 5, 12, 30, 70])
    return f"Document {index}. " + " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def write_shards(folder: Path, sizes: tuple[int, ...] = (7, 5, 9, 6), seed: int = 0) -> list[str]:
    """`len(sizes)` parquet files; returns every text in file order. The last file repeats
    the first document, so a held-out document also occurs later in the stream."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    texts, index = [], 0
    for shard, size in enumerate(sizes):
        rows = [document(index + i, rng) for i in range(size)]
        index += size
        if shard == len(sizes) - 1:
            rows.append(texts[0])
        texts.extend(rows)
        table = pa.table(
            {
                "prompt": [f"Write about topic {i}" for i in range(len(rows))],
                "text": rows,
                "token_length": pa.array([len(r.split()) for r in rows], pa.int64()),
                "audience": ["students"] * len(rows),
                "format": ["textbook"] * len(rows),
                "seed_data": ["fixture"] * len(rows),
            }
        )
        pq.write_table(table, folder / f"train-{shard:05d}-of-{len(sizes):05d}.parquet", row_group_size=4)
    return texts


def corrupt_second_row_group(path: Path) -> None:
    """Garbage over a page header of the second row group: the footer stays valid, so the file
    passes the setup check and fails when a reader gets there."""
    offset = pq.ParquetFile(path).metadata.row_group(1).column(1).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 24] = b"\xff" * 24
    path.write_bytes(bytes(data))
