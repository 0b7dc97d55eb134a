"""Zero-shot multiple-choice accuracy during training, so a run shows more than its loss."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.fsdp import FSDPModule

from src.callbacks.every_n_steps import EveryNSteps
from src.data.tokenizer import load_tokenizer
from src.errors import UserError
from src.evaluation.scoring import score
from src.evaluation.tasks import Task, check_distinct_names, load_task, sample


class DownstreamEval(EveryNSteps):
    """Scores `tasks` (names as `src.evaluate` takes them) every `every_n_steps` steps, at step 0
    and at the end, on a fixed sample of `limit` questions per task (chosen by `seed`), with
    `src.evaluate`'s own scoring: the same sample gives the same numbers there.

    Logs `eval/<task>/acc` and `eval/<task>/acc_norm` to every logger, and the rows to loggers
    that keep a table (`log_eval_table`: W&B). The tasks are read when fit starts, so a missing
    file or an unreachable hub fails the run before its first step. No `tasks`: off.
    Rank 0 scores alone; a sharded model (trainer=fsdp) is refused, as its forward needs every rank.
    """

    def __init__(
        self,
        tasks: list[str] | None = None,
        every_n_steps: int = 1000,
        limit: int | None = 100,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        super().__init__(every_n_steps)
        self.specs = list(tasks or [])
        self.limit, self.seed, self.batch_size = limit, seed, batch_size
        self.tasks: list[Task] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.specs:
            return
        if isinstance(pl_module.model, FSDPModule):
            raise UserError(
                "callbacks.downstream_eval cannot score a sharded model (trainer=fsdp); remove it"
            )
        check_distinct_names(self.specs)
        tasks = [load_task(spec) for spec in self.specs]
        self.tasks = [Task(t.name, sample(t.examples, self.limit, self.seed)) for t in tasks]

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step, model = trainer.global_step, pl_module.model
        if not self.tasks or not trainer.is_global_zero:
            return
        tokenizer = load_tokenizer(pl_module.tokenizer_name)
        was_training = model.training
        model.eval()
        try:
            with torch.compiler.set_stance("force_eager"):  # as TextSamples: no recompiles for new shapes
                results = {t.name: score(model, tokenizer, t.examples, self.batch_size) for t in self.tasks}
        finally:
            model.train(was_training)
        metrics = {
            f"eval/{name}/{key}": getattr(s, key)
            for name, s in results.items()
            for key in ("acc", "acc_norm")
        }
        rows = [
            {"step": step, "task": name, "questions": s.n, "acc": s.acc, "acc_norm": s.acc_norm}
            for name, s in results.items()
        ]
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=pl_module.steps_made)  # the row of this step's metrics
            if hasattr(logger, "log_eval_table"):  # W&B
                logger.log_eval_table(rows, pl_module.steps_made)
        for row in rows:
            rank_zero_info(
                f"[step {step}] {row['task']}: acc {row['acc']:.4f}, acc_norm {row['acc_norm']:.4f}"
            )
