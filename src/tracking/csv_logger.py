"""A CSV logger that a continuation appends to, instead of deleting the run's metrics.

A process that dies between checkpoints (`kill -9`, the OOM killer) has logged steps that its
continuation logs again. The continuation first moves those rows to a side file, so
`metrics.csv` holds each step once and the rows of the lost stretch are still at hand.
"""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path
from typing import IO

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from src.files import atomic_write
from src.lightning_compat import AppendingExperimentWriter, appending_csv_writer


def set_aside_rows_after(metrics_csv: Path, step: int) -> Path | None:
    """Moves the rows of steps > `step` to `metrics.rolled_back_<time>.csv` beside it.

    Returns the side file, or None when no row was past `step`. The kept rows are written to a
    temporary file and renamed over the original, so a crash here loses nothing.
    """
    if not metrics_csv.is_file():
        return None
    with metrics_csv.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = list(reader.fieldnames or []), list(reader)
    late = [bool(row.get("step")) and int(row["step"]) > step for row in rows]
    dropped = [row for row, is_late in zip(rows, late, strict=True) if is_late]
    if not dropped:
        return None
    side = metrics_csv.with_name(f"metrics.rolled_back_{datetime.now():%Y%m%d-%H%M%S}.csv")
    with side.open("w", newline="") as f:
        _write_rows(f, fields, dropped)
    with atomic_write(metrics_csv, newline="") as f:
        _write_rows(f, fields, [row for row, is_late in zip(rows, late, strict=True) if not is_late])
    return side


def _write_rows(f: IO[str], fields: list[str], rows: list[dict[str, str]]) -> None:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)


class ContinuingCSVLogger(CSVLogger):
    """`<run>/csv/metrics.csv`, one file across every continuation of the run."""

    @property
    def experiment(self) -> AppendingExperimentWriter:
        return appending_csv_writer(self)

    @rank_zero_only
    def continue_at(self, step: int) -> None:
        """This process logs after `step`, its checkpoint's: rows logged past it earlier are set aside."""
        side = set_aside_rows_after(Path(self.log_dir) / "metrics.csv", step)
        if side is not None:
            rank_zero_info(
                f"metrics.csv: the rows of steps after {step}, logged after the checkpoint this run "
                f"continues from, moved to {side}"
            )
