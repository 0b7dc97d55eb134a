"""`python -m src.plot <run>`: charts from the run's CSV, duplicate steps resolved, a real PNG."""

from __future__ import annotations

import matplotlib.image
import pytest

from src.errors import UserError
from src.plot import figure, read_series
from tests.helpers import run_cli, write_metrics


@pytest.fixture
def run_dir(tmp_path):
    """Steps 1-10, then a continuation after a crash that re-logs steps 9 and 10 with other values."""
    rows = [{"step": s, "lr": 1e-3, "train/loss": 11 - s, "tokens_per_s": 100 + s} for s in range(1, 11)]
    rows.append({"step": 5, "val/loss": 7.5, "val/ppl": 1808.0})
    rows += [{"step": s, "lr": 5e-4, "train/loss": 1.0, "tokens_per_s": 50} for s in (9, 10)]
    for row in rows:
        row["epoch"] = 0  # as Lightning wrote it before rows carried their step
    write_metrics(tmp_path / "run", rows)
    return tmp_path / "run"


def test_duplicate_steps_keep_the_last_value(run_dir):
    series = read_series(run_dir / "csv" / "metrics.csv")
    assert sorted(series["train/loss"]) == list(range(1, 11))
    assert series["train/loss"][8] == 3 and series["train/loss"][9] == series["train/loss"][10] == 1.0
    assert series["lr"][10] == 5e-4 and series["val/loss"] == {5: 7.5}
    assert "epoch" not in series and "step" not in series


def test_a_last_line_still_being_written_is_left_out(run_dir):
    metrics = run_dir / "csv" / "metrics.csv"
    whole = read_series(metrics)
    metrics.write_text(metrics.read_text() + "10,0,0.0005,0.")  # a row cut mid-write
    assert read_series(metrics) == whole


def test_figure_has_a_panel_per_logged_quantity(run_dir):
    fig = figure(read_series(run_dir / "csv" / "metrics.csv"))
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == ["loss", "learning rate", "tokens/s"]  # no grad norm, no documents: not logged
    loss = panels["loss"]
    assert loss.get_yscale() == "log" and panels["learning rate"].get_yscale() == "linear"
    lines = {line.get_label(): line for line in loss.get_lines()}
    assert set(lines) == {"train/loss", "val/loss"}
    assert list(lines["train/loss"].get_xdata()) == list(range(1, 11))
    assert list(lines["train/loss"].get_ydata())[-3:] == [3, 1.0, 1.0]


def test_documents_seen_and_unique_share_a_panel_when_logged(tmp_path):
    series = {
        "train/loss": {0: 5.0, 1: 4.0},
        "data/documents_seen": {0: 8.0, 1: 16.0},
        "data/unique_documents": {0: 8.0, 1: 10.0},
    }
    panels = {ax.get_title(): ax for ax in figure(series).axes}
    assert list(panels) == ["loss", "unique examples"]
    lines = {line.get_label(): list(line.get_ydata()) for line in panels["unique examples"].get_lines()}
    assert lines == {"data/documents_seen": [8.0, 16.0], "data/unique_documents": [8.0, 10.0]}


def test_a_text_runs_windows_and_epochs_get_their_panels(tmp_path):
    series = {"data/windows_seen": {0: 4.0, 1: 8.0}, "data/unique_windows": {0: 4.0, 1: 6.0}}
    series["data/epochs"] = {0: 4 / 6, 1: 8 / 6}
    panels = {ax.get_title(): ax for ax in figure(series).axes}
    assert list(panels) == ["unique examples", "epochs"]
    assert [line.get_label() for line in panels["unique examples"].get_lines()] == [
        "data/windows_seen",
        "data/unique_windows",
    ]


def test_cli_writes_a_png_into_the_run_folder(run_dir):
    result = run_cli("src.plot", str(run_dir))
    assert result.returncode == 0, result.stderr
    image = matplotlib.image.imread(run_dir / "metrics.png")
    assert image.shape[:2] == (700, 1200)  # 2x2 panels at 6x3.5 inches, 100 dpi
    assert image[..., :3].std() > 0.05  # not a blank canvas


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("/proc/no/such/m.png", "cannot write out=/proc/no/such/m.png"),
        ("m.xyz", "matplotlib cannot write .xyz files; end the name in "),
        (".", "is a folder; pass a file path"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_metrics_are_read(tmp_path, out, message):
    result = run_cli("src.plot", str(tmp_path / "no run"), f"out={tmp_path / out}")  # an absolute out stays
    assert result.returncode == 2 and message in result.stderr and "no metrics" not in result.stderr


def test_missing_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no metrics at"):
        read_series(tmp_path / "csv" / "metrics.csv")
    result = run_cli("src.plot", str(tmp_path))
    assert result.returncode == 2 and "error: no metrics at" in result.stderr


def test_per_layer_health_gets_a_heat_map_of_layers_by_step():
    layers = ["blocks.10", "final_norm", "blocks.2", "embed"]
    series = {"train/loss": {0: 5.0, 2: 4.0}}
    for i, layer in enumerate(layers):
        series[f"health/grad_norm/{layer}"] = {0: 1.0 + i, 2: 2.0 + i}
    series["health/grad_norm/blocks.2"].pop(2)  # a step without this layer: left blank
    fig = figure(series)
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert list(panels) == ["loss", "gradient norm by layer"]
    heat = panels["gradient norm by layer"]
    assert [t.get_text() for t in heat.get_yticklabels()] == ["embed", "blocks.2", "blocks.10", "final_norm"]
    (mesh,) = heat.collections
    values = mesh.get_array().reshape(4, 2)  # (layers, steps)
    assert values[0].tolist() == [4.0, 5.0] and values.mask[1].tolist() == [False, True]
    assert values[2].tolist() == [1.0, 2.0] and mesh.norm.__class__.__name__ == "LogNorm"


def test_a_compared_run_is_drawn_dashed_on_the_same_panels():
    series = {"train/loss": {0: 5.0, 1: 4.0}}
    other = {"train/loss": {0: 5.0, 1: 9.0}, "lr": {0: 1e-3, 1: 1e-3}}
    panels = {ax.get_title(): ax for ax in figure(series, others={"off": other}).axes}
    assert list(panels) == ["loss", "learning rate"]
    lines = {line.get_label(): line for line in panels["loss"].get_lines()}
    assert set(lines) == {"train/loss", "train/loss (off)"}
    assert lines["train/loss (off)"].get_linestyle() == "--" and list(
        lines["train/loss (off)"].get_ydata()
    ) == [5, 9]
    assert [line.get_label() for line in panels["learning rate"].get_lines()] == ["lr (off)"]
    assert lines["train/loss"].get_color() == lines["train/loss (off)"].get_color()  # one colour per quantity
