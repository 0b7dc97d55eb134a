"""Charts of a run from its local metrics, for people who do not use W&B.

python -m src.plot <run folder>          (or run_dir=<run folder> [out=<file.png>])
python -m src.plot <run folder> compare=<other run folder>    (the other run dashed, on the same panels)

Reads `<run>/csv/metrics.csv`, which every logger config writes, and saves `<run>/metrics.png`:
a line panel per quantity, and a heat map (layer x step) per `health/<quantity>/<layer>` logged.
"""

from __future__ import annotations

import csv
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import MISSING

from src.cli import command_name, parse_cli
from src.errors import UserError, exit_on_user_error
from src.extras import require_extra
from src.files import check_output_file

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# (title, metric keys, log-scale y): a panel is drawn when one of its keys was logged.
PANELS = [
    ("loss", ["train/loss", "val/loss"], True),
    ("learning rate", ["lr"], False),
    ("tokens/s", ["tokens_per_s"], False),
    ("gradient norm", ["grad_norm"], True),
    # Seed 001's "unique examples": distinct documents (streams) or windows (text files) against all
    # seen, so repeats show as the gap between the two lines; and the passes over finite data.
    (
        "unique examples",
        ["data/documents_seen", "data/unique_documents", "data/windows_seen", "data/unique_windows"],
        False,
    ),
    ("epochs", ["data/epochs"], False),
]

# (quantity, title) of the per-layer heat maps (src/callbacks/layer_health.py).
HEAT_MAPS = [
    ("grad_norm", "gradient norm by layer"),
    ("weight_norm", "weight norm by layer"),
    ("update_ratio", "update / weight norm by layer"),
]

Series = dict[str, dict[int, float]]


@dataclass
class PlotConfig:
    run_dir: str = MISSING
    out: str = ""  # empty = <run_dir>/metrics.png
    compare: str = ""  # another run folder, drawn dashed on the same panels


def read_series(metrics_csv: Path) -> Series:
    """key -> {step: value}; a step logged twice (a continuation after a crash redoes it) keeps the last.

    Every row is logged at the optimizer steps made (`LitSmolLM2.steps_made`): the step
    summary.json, the samples and the checkpoints name, counting the steps a loss-spike rollback
    undid, and 0 for the evaluations before training. A last line still being written (no
    newline yet) is left out.
    """
    if not metrics_csv.is_file():
        raise UserError(f"no metrics at {metrics_csv}; give a run folder that a training run wrote")
    series: Series = {}
    lines = metrics_csv.read_text().splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines.pop()
    for row in csv.DictReader(lines):
        for key, value in row.items():
            if key not in ("step", "epoch") and value not in ("", None):
                series.setdefault(key, {})[int(row["step"])] = float(value)
    return series


def layer_key(layer: str) -> tuple[int, int, str]:
    """Input to output: embed, blocks.0, blocks.1, ..., blocks.10, then the rest (final_norm, lm_head)."""
    if layer == "embed":
        return (0, 0, layer)
    if match := re.fullmatch(r"blocks\.(\d+)", layer):
        return (1, int(match.group(1)), layer)
    return (2, 0, layer)


def heat_map(series: Series, quantity: str) -> tuple[list[str], list[int], list[list[float]]] | None:
    """(layers, steps, values[layer][step]) of `health/<quantity>/*`, NaN where a step is missing."""
    prefix = f"health/{quantity}/"
    layers = sorted((k.removeprefix(prefix) for k in series if k.startswith(prefix)), key=layer_key)
    if not layers:
        return None
    steps = sorted({step for layer in layers for step in series[prefix + layer]})
    return layers, steps, [[series[prefix + layer].get(s, float("nan")) for s in steps] for layer in layers]


def figure(series: Series, title: str = "", others: dict[str, Series] | None = None) -> Figure:
    """One panel per quantity that was logged, all against the optimizer step; `others` (by run
    name) dashed on the same panels."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure  # an extra: main() checks for it first

    others = others or {}
    logged_keys = set(series).union(*others.values())
    panels = [(name, [k for k in keys if k in logged_keys], log) for name, keys, log in PANELS]
    panels = [p for p in panels if p[1]]
    maps = [(name, data) for quantity, name in HEAT_MAPS if (data := heat_map(series, quantity))]
    if not panels and not maps:
        raise UserError(f"none of {[k for _, keys, _ in PANELS for k in keys]} was logged")
    count = len(panels) + len(maps)
    cols = 2 if count > 1 else 1
    rows = (count + cols - 1) // cols
    fig = Figure(figsize=(6 * cols, 3.5 * rows), layout="constrained")
    fig.suptitle(title)
    for i, (name, keys, log) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        runs = [(series, "", "-")] + [(other, f" ({run})", "--") for run, other in others.items()]
        for k, key in enumerate(keys):
            color = f"C{k}"  # one colour per quantity, in every run: the line style tells the runs apart
            for values, run, style in runs:
                if key not in values:
                    continue
                steps = sorted(values[key])
                marker = "o" if len(steps) < 30 else None  # a few validation points stay visible
                ax.plot(
                    steps, [values[key][s] for s in steps], style, color=color, label=key + run, marker=marker
                )
        ax.set(title=name, xlabel="step", yscale="log" if log else "linear")
        ax.grid(alpha=0.3)
        ax.legend()
    for i, (name, (layers, steps, values)) in enumerate(maps, start=len(panels)):
        ax = fig.add_subplot(rows, cols, i + 1)
        mesh = ax.pcolormesh(steps, range(len(layers)), values, norm=LogNorm(), shading="nearest")
        ax.set_yticks(range(len(layers)), layers)
        ax.set(title=name, xlabel="step")
        fig.colorbar(mesh, ax=ax)
    return fig


def check_image_path(out: Path) -> None:
    """A file matplotlib can write, in a format it knows (by the name's suffix), checked before
    the metrics are read."""
    from matplotlib.backend_bases import FigureCanvasBase

    check_output_file(out, "out")
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix and out.suffix[1:].lower() not in formats:
        known = ", ".join(f".{name}" for name in sorted(formats))
        raise UserError(f"out={out}: matplotlib cannot write {out.suffix} files; end the name in {known}")


def plot_run(run_dir: Path, out: Path | None = None, compare: Path | None = None) -> Path:
    out = out or run_dir / "metrics.png"
    check_image_path(out)
    others = {compare.resolve().name: read_series(compare / "csv" / "metrics.csv")} if compare else None
    series = read_series(run_dir / "csv" / "metrics.csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    figure(series, title=run_dir.resolve().name, others=others).savefig(out, dpi=100)
    return out


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(PlotConfig, argv, positional="run_dir")
    require_extra("matplotlib", "plot", command_name())
    out = plot_run(
        Path(cfg.run_dir), Path(cfg.out) if cfg.out else None, Path(cfg.compare) if cfg.compare else None
    )
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
