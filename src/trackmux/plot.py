"""Drawing a run's metric curves from its jsonl log: ``trackmux plot RUN_DIR -o curves.png``.

One panel per quantity, x = global step: the metrics that differ only by their prefix share a
panel (``train/loss`` and ``eval/loss`` both go to "loss"), so a training curve and its
evaluation curve read side by side. matplotlib is an optional dependency
(``pip install 'trackmux[plot]'``); the figure is drawn with the Agg canvas, never a window,
and without touching pyplot's global state.
"""

from __future__ import annotations

import fnmatch
import math
import os

INSTALL = "pip install 'trackmux[plot]'"
#: left out unless asked for by name: how fast the run went, not how well it learned
DEFAULT_EXCLUDED = ("*runtime", "*samples_per_second", "*steps_per_second")
COLUMNS = 3


class PlotError(Exception):
    """The plot cannot be drawn (no matplotlib, no matching metric)."""


def select(names, patterns=None) -> list[str]:
    """The metric names ``patterns`` (exact names or shell patterns) pick, in name order;
    without patterns, all but runtimes and throughputs."""
    names = sorted(names)
    if not patterns:
        return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in DEFAULT_EXCLUDED)]
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def panels(names) -> dict[str, list[str]]:
    """Panel title -> the metrics drawn in it: grouped by the last part of the name."""
    grouped: dict[str, list[str]] = {}
    for name in names:
        grouped.setdefault(name.rsplit("/", 1)[-1], []).append(name)
    return grouped


def _figure_class():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise PlotError(f"plotting needs matplotlib, which is not installed: {INSTALL}") from error
    return Figure, FigureCanvasAgg


def plot_run(run, output, metrics=None, *, title: str | None = None) -> list[str]:
    """Draw the metrics of ``run`` (a :class:`~trackmux.runlog.RunLog` or a run directory) to
    the image file ``output`` (format from its extension); returns the metric names drawn."""
    if not hasattr(run, "metrics"):
        from .runlog import read_run

        run = read_run(run)
    chosen = select([n for n, history in run.metrics.items() if history], metrics)
    if not chosen:
        wanted = ", ".join(metrics) if metrics else "any metric"
        available = ", ".join(sorted(run.metrics)) or "none"
        raise PlotError(f"run {run.name} has no metric matching {wanted} (it has: {available})")
    Figure, Canvas = _figure_class()
    groups = panels(chosen)
    columns = min(COLUMNS, len(groups))
    rows = math.ceil(len(groups) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.0 * rows + 0.4), layout="constrained")
    Canvas(figure)
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (panel, names) in zip(axes, groups.items()):
        for name in names:
            points = [(s, v) for s, v in run.metrics[name] if math.isfinite(v)]
            steps = [s for s, _ in points]
            values = [v for _, v in points]
            # a few points (an evaluation every N steps) read better as markers
            marker = "o" if len(points) <= 50 else None
            axis.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=name)
        axis.set_title(panel)
        axis.set_xlabel("step")
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    for axis in axes[len(groups) :]:
        axis.set_visible(False)
    status = run.status or "did not finish"
    figure.suptitle(title or f"{run.name} ({status})")
    directory = os.path.dirname(os.path.abspath(os.fspath(output)))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(os.fspath(output), dpi=100)
    return chosen
