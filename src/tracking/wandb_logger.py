"""W&B logging for runs that span several processes, with or without an account or a network."""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

import wandb
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from src.errors import UserError
from src.lightning_compat import wandb_init_args, wandb_run
from src.training.value_checks import check_wandb_mode

SAMPLES_KEY = "samples"
SAMPLE_COLUMNS = ["step", "prompt", "completion"]
EVAL_KEY = "eval/table"
EVAL_COLUMNS = ["step", "task", "questions", "acc", "acc_norm"]


def has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode(requested: str) -> tuple[str, str]:
    """(mode, why): WANDB_MODE wins; `auto` is online only with an API key, so a run never waits on login."""
    check_wandb_mode(requested)
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"], f"WANDB_MODE={os.environ['WANDB_MODE']}"
    if requested == "auto":
        if has_wandb_credentials():
            return "online", "an API key was found"
        return "offline", "no W&B API key (WANDB_API_KEY or ~/.netrc)"
    return requested, f"logger.wandb.mode={requested}"


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, made to follow one run across continuations.

    - `mode=auto` falls back to offline, with one message, when the server does not answer
      within `init_timeout` seconds, instead of failing or hanging on a machine without network.
    - `log_text_samples` (and `log_eval_table`, the downstream scores) append to one INCREMENTAL
      table each, so the rows of every step (and of every continuation, which resumes the same
      run id) read as one growing table.
    - `finish` ends the W&B run once fit is over (Lightning's `finalize` also runs after the
      step-0 `validate`, too early), so its files are complete and a second fit in the same
      process (a test, a notebook) starts a fresh run instead of reusing the old one.
    - The run name defaults to the run folder's name, which a continuation shares.
    - W&B's own step is the one every row is logged at (`trainer/global_step`: the optimizer
      steps made, `LitSmolLM2.steps_made`), so `continue_at(s)` can rewind the run
      (`resume_from="<id>?_step=<s>"`) to the last step the checkpoint holds: the steps a
      crashed process logged after it are replaced, not drawn twice. Offline, the rewind is
      recorded in the run's file and applied by `wandb sync`. A server without rewind (a W&B
      preview feature) gets a plain resume instead, with one message.
    """

    def __init__(
        self,
        save_dir: str,
        mode: str = "auto",
        init_timeout: float = 30.0,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.requested_mode = mode
        resolved, self.mode_reason = wandb_mode(mode)
        Path(save_dir).mkdir(parents=True, exist_ok=True)  # W&B writes to a temp dir if it is missing
        super().__init__(
            save_dir=save_dir,
            name=name or Path(save_dir).resolve().name,
            mode=resolved,
            settings=wandb.Settings(init_timeout=init_timeout),
            **kwargs,
        )
        self._tables: dict[str, wandb.Table] = {}
        self._finished = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        init = wandb_init_args(self)
        if wandb_run(self) is None and init["mode"] == "online":
            try:
                return self._start_online(init)
            except wandb.Error as err:
                if self.requested_mode != "auto" or os.environ.get("WANDB_MODE"):
                    raise UserError(
                        f"W&B could not start an online run ({str(err).splitlines()[0]}); "
                        "use logger.wandb.mode=offline (or auto) and `wandb sync` later"
                    ) from None
                wandb.teardown()  # the failed run keeps its id busy in W&B's service process
                init["mode"] = "offline"
                self.mode_reason = f"the W&B server did not answer ({str(err).splitlines()[0]})"
        if wandb_run(self) is None and init["mode"] == "offline":
            run_dir = Path(init["dir"]) / "wandb"
            rank_zero_info(
                f"W&B: logging offline because {self.mode_reason}; upload later with "
                f"`wandb sync {run_dir}/offline-run-*-{init['id']}`"
            )
        return WandbLogger.experiment.fget(self)

    def _start_online(self, init: dict[str, Any]) -> Any:
        """Online, with the rewind `continue_at` asked for; a server that refuses it gets a plain resume.

        When the plain resume fails too (no server at all), the rewind is put back, so that
        the offline run `mode=auto` falls back to still records it.
        """
        try:
            return WandbLogger.experiment.fget(self)
        except wandb.Error as err:
            rewind = init.pop("resume_from", None)
            if rewind is None:
                raise
            wandb.teardown()
            init["resume"] = "allow"
            try:
                run = WandbLogger.experiment.fget(self)
            except wandb.Error:
                del init["resume"]
                init["resume_from"] = rewind
                raise err from None
            rank_zero_info(
                f"W&B: the server did not rewind the run ({str(err).splitlines()[0]}); resumed it "
                "instead: the steps logged again after the checkpoint keep their first values"
            )
            return run

    def continue_at(self, step: int) -> None:
        """This process logs after `step`, its checkpoint's: rewind the run there, dropping the rest."""
        init = wandb_init_args(self)
        if step > 0 and init["mode"] != "disabled":
            init.pop("resume", None)  # W&B takes one of resume and resume_from
            init["resume_from"] = f"{init['id']}?_step={step}"

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """At `step` as W&B's own step too, which the rewind of `continue_at` counts in."""
        if step is None:
            super().log_metrics(metrics)
        else:
            self.experiment.log({**metrics, "trainer/global_step": step}, step=step)

    @rank_zero_only
    def log_text_samples(self, rows: list[dict[str, Any]], step: int) -> None:
        """Append {step, prompt, completion} rows; W&B stores only the new rows each time."""
        self._append(SAMPLES_KEY, SAMPLE_COLUMNS, rows, step)

    @rank_zero_only
    def log_eval_table(self, rows: list[dict[str, Any]], step: int) -> None:
        """Append {step, task, questions, acc, acc_norm} rows (callbacks.downstream_eval)."""
        self._append(EVAL_KEY, EVAL_COLUMNS, rows, step)

    def _append(self, key: str, columns: list[str], rows: list[dict[str, Any]], step: int) -> None:
        if key not in self._tables:
            self._tables[key] = wandb.Table(columns=columns, log_mode="INCREMENTAL")
        for row in rows:
            self._tables[key].add_data(*(row[column] for column in columns))
        self.log_metrics({key: self._tables[key]}, step=step)

    @rank_zero_only
    def log_histograms(self, histograms: dict[str, tuple[list[float], list[float]]], step: int) -> None:
        """{name: (counts, bin edges)} as W&B histograms (src/callbacks/layer_health.py)."""
        self.log_metrics(
            {name: wandb.Histogram(np_histogram=hist) for name, hist in histograms.items()}, step=step
        )

    @rank_zero_only
    def log_summary(self, values: dict[str, Any]) -> None:
        """Keys of the run summary (W&B shows a metric's last value there unless told otherwise)."""
        self.experiment.summary.update(values)

    @rank_zero_only
    def finish(self, success: bool) -> None:
        run = wandb_run(self)
        if run is not None and not self._finished:
            run.finish(exit_code=0 if success else 1)
            self._finished = True
