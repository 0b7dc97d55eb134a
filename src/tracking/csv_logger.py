"""A CSV logger that a continuation appends to, instead of deleting the run's metrics."""

from __future__ import annotations

from lightning.pytorch.loggers import CSVLogger

from src.lightning_compat import AppendingExperimentWriter, appending_csv_writer


class ContinuingCSVLogger(CSVLogger):
    """`<run>/csv/metrics.csv`, one file across every continuation of the run."""

    @property
    def experiment(self) -> AppendingExperimentWriter:
        return appending_csv_writer(self)
