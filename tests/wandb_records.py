"""Read what W&B wrote for an offline run: its `run-<id>.wandb` log, the file `wandb sync` uploads.

wandb 0.31 writes no `files/config.yaml` or `wandb-summary.json` for offline runs, and has no
public reader, so this decodes the log (a LevelDB-style record log of protobuf `Record`s).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)
BLOCK, CHUNK_HEADER = 32 * 1024, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = path.read_bytes()
    assert data.startswith(HEADER), f"{path} is not a W&B transaction log"
    out, pending, pos = [], b"", len(HEADER)
    while pos + CHUNK_HEADER <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER:  # block trailer too small for a header: padding
            pos += BLOCK - pos % BLOCK
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + CHUNK_HEADER])
        chunk = data[pos + CHUNK_HEADER : pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


@dataclass
class OfflineRun:
    """The parts of one offline run the tests look at."""

    folder: Path
    run: pb.RunRecord | None = None
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def sample_rows(self) -> list[list[Any]]:
        """Rows of every increment of the samples table this run logged."""
        files = sorted((self.folder / "files" / "media" / "table").glob("samples_*.table.json"))
        return [row for f in files for row in json.loads(f.read_text())["data"]]


def items(updates, nested: bool = True) -> dict[str, Any]:
    """key -> value; a nested update (`samples/nrows`) keeps its full path, or only its top key."""
    return {
        u.key or "/".join(u.nested_key if nested else u.nested_key[:1]): json.loads(u.value_json)
        for u in updates
    }


def read_offline_run(folder: Path) -> OfflineRun:
    (log,) = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run = record.run
        if kind in ("run", "config"):
            run.config.update(items(record.run.config.update if kind == "run" else record.config.update))
        elif kind == "summary":
            run.summary.update(items(record.summary.update, nested=False))
        elif kind == "history":
            run.history.append(items(record.history.item))
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    """Every offline run W&B wrote into `<run>/wandb/`, oldest first (one per continuation)."""
    return [read_offline_run(f) for f in sorted((run_dir / "wandb").glob("offline-run-*"))]
