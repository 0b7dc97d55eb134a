"""A finished (or stopped) run in a few lines of markdown: losses by validation step, speed, time,
the last sample, and whether a falling train loss is memorisation.

python -m src.report <run folder>

Reads what every run writes: `csv/metrics.csv`, `summary.json` and `samples.jsonl`. Steps are
optimizer steps taken as the loggers count them (`read_series`; a loss-spike rollback's undone
steps included). Training losses are single logged steps, so noisy at small batches; each row gives
their mean over the steps logged since the previous validation. The
verdict compares the held-out loss at its best step with the last one: a validation loss that
rose while the train loss fell is memorisation.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from omegaconf import MISSING

from src.cli import parse_cli
from src.errors import UserError, exit_on_user_error
from src.plot import Series, read_series

RISE = 1.02  # a last validation loss this many times its best counts as rising, above noise


@dataclass
class ReportConfig:
    run_dir: str = MISSING
    sample_chars: int = 300  # of the last sample's completion; 0 = all of it


@dataclass
class Row:
    step: int
    train_loss: float | None  # mean of the logged steps in (previous validation, step]
    val_loss: float | None  # None: the steps trained after the last validation


def loss_rows(train: dict[int, float], val: dict[int, float]) -> list[Row]:
    """One row per validation step, with the mean train loss logged since the previous one, and
    one for the steps logged after the last validation (a run stopped between two)."""
    rows, previous = [], -1
    for step in sorted(val):
        window = [loss for s, loss in train.items() if previous < s <= step]
        rows.append(Row(step, statistics.fmean(window) if window else None, val[step]))
        previous = step
    if after := [loss for s, loss in train.items() if s > previous]:
        rows.append(Row(max(train), statistics.fmean(after), None))
    return rows


def losses(series: Series, summary: dict) -> tuple[dict[int, float], dict[int, float]]:
    """Train and validation losses keyed by the optimizer steps taken before them, both as the
    loggers count them: after a loss-spike rollback these include the undone steps, which
    summary.json's validations (keyed by the weights' step) do not, so it only stands in for a
    CSV without validations."""
    train = series.get("train/loss", {})
    by_step = summary.get("val/loss_by_step")  # RunSummary's VAL_LOSSES; importing it loads lightning
    val = series.get("val/loss") or ({int(s): v for s, v in by_step.items()} if by_step else {})
    return train, val


def verdict(rows: list[Row]) -> str:
    """Memorisation (validation rising while training falls), or where validation stands."""
    rows = [row for row in rows if row.val_loss is not None]
    if len(rows) < 2:
        return "one validation only: no trend to judge"
    best = min(rows, key=lambda row: row.val_loss)
    last = rows[-1]
    at_last = f"at the last validation (step {last.step:,})"
    if last is best:
        return f"not memorising: val/loss is at its lowest ({last.val_loss:.4f}) {at_last}"
    if last.val_loss <= best.val_loss * RISE:
        within = f"within {RISE - 1:.0%} of its best"
        return f"not memorising: val/loss {at_last} is {last.val_loss:.4f}, {within}"
    rose = f"val/loss rose from {best.val_loss:.4f} (step {best.step:,})"
    rose += f" to {last.val_loss:.4f} (step {last.step:,})"
    if best.train_loss is not None and last.train_loss is not None and last.train_loss < best.train_loss:
        return f"memorising: {rose} while train/loss fell from {best.train_loss:.4f} to {last.train_loss:.4f}"
    return rose


def last_sample(run_dir: Path) -> dict | None:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return None
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def report(run_dir: Path, sample_chars: int = 300) -> str:
    series = read_series(run_dir / "csv" / "metrics.csv")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    train, val = losses(series, summary)
    rows = loss_rows(train, val)
    lines = [f"## {run_dir.resolve().name}", ""]
    logged_steps = max(train, default=0)
    steps = summary.get("steps", logged_steps)  # the weights' optimizer steps (summary.json)
    undone = (
        f" ({logged_steps - steps:,} more logged, undone by loss-spike rollbacks)"
        if logged_steps > steps
        else ""
    )
    facts = [f"{steps:,} steps{undone}"]
    if "tokens_seen" in summary:
        facts.append(f"{summary['tokens_seen']:,} tokens")
    speeds = list(series.get("tokens_per_s", {}).values())
    if speeds:
        facts.append(f"{statistics.median(speeds):,.0f} tokens/s (median of {len(speeds)} logged)")
    if "wall_time_s" in summary:
        facts.append(f"wall time {summary['wall_time_s'] / 60:.1f} min")
    lines += [", ".join(facts), ""]
    if val:
        lines += ["| step | train/loss (mean since last val) | val/loss |", "|---:|---:|---:|"]
        lines += [f"| {row.step:,} | {fmt(row.train_loss)} | {fmt(row.val_loss)} |" for row in rows]
        lines += ["", verdict(rows)]
    else:
        lines.append("no validation logged: no held-out loss to judge the train loss by")
    sample = last_sample(run_dir)
    if sample is not None:
        text = sample["completion"] if sample_chars <= 0 else sample["completion"][:sample_chars]
        lines += ["", f"sample at step {sample['step']:,}: {json.dumps(sample['prompt'] + text)}"]
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(ReportConfig, argv, positional="run_dir")
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run_dir={run_dir} is not a folder; give a run folder (logs/train/runs/<run>)")
    print(report(run_dir, cfg.sample_chars))


if __name__ == "__main__":
    main()
