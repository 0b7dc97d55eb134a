"""FSDP2 through Lightning: `ModelParallelStrategy` over a data-parallel mesh of every process.

The LightningModule shards the model itself (`configure_model`, src/training/parallelize.py);
this strategy fixes the three things Lightning's class leaves to it:

- the mesh: Lightning's `data_parallel_size="auto"` is the number of nodes (it expects tensor
  parallelism inside a node); here every process is one data-parallel rank, as in DDP;
- precision: under `bf16-mixed` the FSDP2 policy gathers weights in bf16 and reduces gradients
  in fp32, so Lightning's autocast would only add casts on top: it is switched off;
- checkpoints: a sharded checkpoint is a folder that Lightning rewrites in place, so a kill
  mid-save would leave half of one. Each save writes a new hidden folder and then points
  `last.ckpt` (a symbolic link) at it with one rename.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.precision import MixedPrecision, Precision
from lightning.pytorch.strategies import ModelParallelStrategy

from src.errors import UserError
from src.lightning_compat import set_mesh_sizes
from src.training.checkpoint import stop_signals_deferred

PRECISIONS = ("32-true", "bf16-mixed")


class ShardedMixedPrecision(Precision):
    """bf16-mixed as the FSDP2 policy runs it: no autocast (the name stays, for MFU's peak)."""

    precision = "bf16-mixed"


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (FSDP2) over all `devices x num_nodes` processes."""

    def setup_environment(self) -> None:
        precision = self.precision_plugin.precision
        if precision not in PRECISIONS:
            raise UserError(f"trainer=fsdp trains in {' or '.join(PRECISIONS)}, got precision={precision}")
        set_mesh_sizes(self, data_parallel=self.num_nodes * self.num_processes, tensor_parallel=1)
        super().setup_environment()
        if isinstance(self.precision_plugin, MixedPrecision):
            self.precision_plugin = ShardedMixedPrecision()

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Every rank writes its shards into a new folder; then rank 0 points `filepath` at it."""
        path = Path(self.broadcast(str(filepath)))
        folder = path.with_name(self.broadcast(f".{path.name}-{time.time_ns()}"))
        with stop_signals_deferred():
            super().save_checkpoint(checkpoint, folder, storage_options)
            if self.is_global_zero:
                point_link_at(path, folder)
        self.barrier()


def point_link_at(link: Path, folder: Path) -> None:
    """Make `link` a relative symbolic link to `folder` in one rename, then delete older folders.

    A `link` that is a plain file or folder (written another way) is replaced too; only that
    case is not atomic.
    """
    tmp = link.with_name(f".{link.name}.link-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    os.symlink(folder.name, tmp)
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    os.replace(tmp, link)
    for stale in link.parent.glob(f".{link.name}-*"):
        if stale.name != folder.name:
            shutil.rmtree(stale, ignore_errors=True)
