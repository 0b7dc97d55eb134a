"""Where a command's artifacts go by default: outputs/<kind>/ under the working directory,
beside logs/ (the runs), as the design card lays out."""

from __future__ import annotations

from pathlib import Path


def default_output_dir(kind: str) -> Path:
    """outputs/<kind>/ (export, eval, generate) under the current directory."""
    return Path.cwd() / "outputs" / kind
