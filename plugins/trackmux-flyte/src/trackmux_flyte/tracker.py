"""The Flyte tracker: the log history as a Deck of the Flyte task that trains, checkpoints
synced to the task's checkpoint.

Flyte is not a metrics store: a task's "logging" is the HTML of its Decks, written when the
task ends. So metrics are kept in memory while training runs, and each finish renders them
(a table of every metric at every step, one SVG line chart per metric, the config, the status)
as the Deck ``training``. With an artifact policy, every saved checkpoint (or the final model)
is uploaded with ``current_context().checkpoint.save(path)``, which Flyte restores after a
retry (``current_context().checkpoint.restore()``).

Outside a Flyte task there is nothing to write to: ``report_to="all"`` skips the tracker, and
when it is named explicitly it says once that it is inactive and does nothing.
"""

from __future__ import annotations

import contextvars
import html
import logging
import math
import os
import sys
from typing import Any

from trackmux.tracker import RunInfo, Tracker

logger = logging.getLogger(__name__)

DECK_NAME = "training"
ARTIFACTS_ENV = "TRACKMUX_FLYTE_ARTIFACTS"
#: set by Flyte in the pods of a task running on a Flyte cluster
EXECUTION_ID_ENV = "FLYTE_INTERNAL_EXECUTION_ID"
NOT_LOADED = "not inside a Flyte task: flytekit is not loaded in this process"
NO_TASK = "not inside a Flyte task: flytekit's current context runs no task"

CHART_WIDTH, CHART_HEIGHT, CHART_MARGIN = 360, 120, 6


def _task_context():
    """(flytekit's current context, None) inside a task, else (None, why not).

    A Flyte task always runs under flytekit, so a process that has not imported it runs no
    task: that check costs nothing and keeps discovery from importing flytekit. Inside one,
    only a task execution carries a checkpoint object; the workflow body and plain code
    outside a task do not."""
    if "flytekit" not in sys.modules:
        return None, NOT_LOADED
    from flytekit.core.context_manager import FlyteContextManager

    context = FlyteContextManager.current_context()
    state, params = context.execution_state, context.user_space_params
    if context.compilation_state is not None or state is None or state.mode is None:
        return None, NO_TASK
    try:
        params.checkpoint  # noqa: B018 (the property raises when the context has none)
    except NotImplementedError:
        return None, NO_TASK
    return context, None


class FlyteTracker(Tracker):
    """Renders a trackmux run as a Deck of the Flyte task it runs in.

    Settings (``tracker_config={"flyte": {...}}``): ``deck_name`` (default "training"),
    ``artifacts`` (TRACKMUX_FLYTE_ARTIFACTS): "checkpoint" uploads every save to the task's
    checkpoint, "last"/"best" one checkpoint at the end, "end" the final model.
    """

    name = "flyte"
    requires = ("flytekit>=1.16",)
    artifacts_env = ARTIFACTS_ENV
    # the Deck belongs to the task's context, which lives in the training process
    out_of_process = False

    def __init__(self, **settings):
        super().__init__(**settings)
        self.inactive: str | None = None
        self.deck_name: str = DECK_NAME
        self.deck = None
        self.synced: list[str] = []
        self._warned = False
        self._context: contextvars.Context | None = None
        self._params = None
        self._task: str | None = None
        self._config: dict[str, Any] = {}
        self._rows: list[tuple[int, float | None, dict[str, float]]] = []
        self._summary: dict[str, float] = {}
        self._status: str | None = None

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        return _task_context()[1]

    @classmethod
    def mode(cls) -> str:
        # a cluster execution uploads its decks to the platform's blob store
        return "online" if os.environ.get(EXECUTION_ID_ENV) else "local"

    def artifact_policy(self, default: str = "none") -> str:
        policy = super().artifact_policy(default)  # a bad setting fails even outside a task
        return "none" if _task_context()[1] else policy

    def where(self) -> str | None:
        if self._task is None:
            return None
        return f"Flyte deck {self.deck_name!r} of task {self._task}"

    # -- the run ------------------------------------------------------------------------

    def prepare(self, run: RunInfo) -> None:
        # flytekit keeps its context in a ContextVar: a fresh thread (the worker) would see a
        # default context, not the task's, so capture the loop thread's context here
        context, self.inactive = _task_context()
        if self.inactive:
            self._warn_once(
                "the flyte tracker is inactive (%s); training goes on without it",
                self.inactive,
            )
            return
        self._context = contextvars.copy_context()
        self._params = context.user_space_params
        if not self._params.enable_deck:
            self._warn_once(
                "the flyte tracker renders its deck, but this task has decks disabled: "
                "use @task(enable_deck=True) to see it"
            )

    def start(self, run: RunInfo) -> dict[str, Any] | None:
        if self.inactive:
            return None
        self.deck_name = self.setting("deck_name", DECK_NAME)
        self._config = dict(run.config)
        params = self._params
        execution = params.execution_id
        self._task = (
            f"{params.task_id.name} ({execution.project}:{execution.domain}:{execution.name})"
        )
        self._status = None
        return {"execution": f"{execution.project}:{execution.domain}:{execution.name}"}

    def log_metrics(self, metrics, step, epoch=None):
        if self.inactive:
            return
        last = self._rows[-1] if self._rows else None
        # the train log and the eval log of one step share a row, as long as no name repeats
        if last is not None and last[0] == step and not (last[2].keys() & metrics.keys()):
            last[2].update(metrics)
        else:
            self._rows.append((step, epoch, dict(metrics)))

    def log_summary(self, metrics, step):
        if not self.inactive:
            self._summary.update(metrics)

    def log_artifact(self, path, kind, step):
        if self.inactive:
            return
        # SyncCheckpoint.save uploads with the file access of flytekit's *current* context
        self._context.run(self._params.checkpoint.save, path)
        self.synced.append(path)

    def finish(self, status):
        if self.inactive:
            return
        self._status = status
        self._context.run(self._publish)

    def _publish(self) -> None:
        from flytekit import Deck

        decks = self._params.decks
        # an evaluate() after train() finishes the run again: one deck, the latest history
        if self.deck in decks:
            decks.remove(self.deck)
        self.deck = Deck(self.deck_name, self.render(), auto_add_to_deck=False)
        decks.append(self.deck)

    def _warn_once(self, message: str, *arguments) -> None:
        if not self._warned:
            self._warned = True
            logger.warning(message, *arguments)

    # -- the HTML -----------------------------------------------------------------------

    def render(self) -> str:
        names = list(dict.fromkeys(name for _, _, metrics in self._rows for name in metrics))
        parts = [
            "<div class='trackmux-flyte'>",
            f"<h2>{_text(self._task)}</h2>",
            f"<p>status: <b>{_text(self._status)}</b></p>",
        ]
        parts += [_chart(name, self._history(name)) for name in names]
        parts.append(_metrics_table(names, self._rows))
        if self._summary:
            parts.append(_key_value_table("summary", "metric", self._summary))
        if self._config:
            parts.append(_key_value_table("config", "param", self._config))
        parts.append("</div>")
        return "\n".join(parts)

    def _history(self, name: str) -> list[tuple[int, float]]:
        return [(step, metrics[name]) for step, _, metrics in self._rows if name in metrics]


def _text(value) -> str:
    return html.escape(str(value))


def _number(value) -> str:
    # repr: the shortest text that reads back as the same float, as the jsonl log prints it
    return _text(repr(value))


def _metrics_table(names: list[str], rows) -> str:
    """One row per log call (a step's train and eval logs merged), one column per metric."""

    def cells(metrics) -> str:
        return "".join(
            f"<td>{_number(metrics[name])}</td>" if name in metrics else "<td></td>"
            for name in names
        )

    head = "".join(f"<th>{_text(name)}</th>" for name in names)
    body = [
        f"<tr><td>{step}</td><td>{'' if epoch is None else _number(epoch)}</td>{cells(metrics)}</tr>"
        for step, epoch, metrics in rows
    ]
    return "\n".join(
        ["<h3>metrics</h3>", "<table border='1' class='metrics'>"]
        + [f"<tr><th>step</th><th>epoch</th>{head}</tr>"]
        + body
        + ["</table>"]
    )


def _value(value) -> str:
    return _number(value) if isinstance(value, float) else _text(value)


def _key_value_table(title: str, key: str, values: dict) -> str:
    rows = [
        f"<tr><td>{_text(name)}</td><td>{_value(value)}</td></tr>" for name, value in values.items()
    ]
    return "\n".join(
        [f"<h3>{title}</h3>", f"<table border='1' class='{title}'>"]
        + [f"<tr><th>{key}</th><th>value</th></tr>"]
        + rows
        + ["</table>"]
    )


def _chart(name: str, points: list[tuple[int, float]]) -> str:
    """One inline SVG line chart: no plotting library in the task's image."""
    points = [(step, value) for step, value in points if math.isfinite(value)]
    if not points:
        return ""
    steps, values = [s for s, _ in points], [v for _, v in points]
    low_step, high_step, low, high = min(steps), max(steps), min(values), max(values)
    width, height = CHART_WIDTH - 2 * CHART_MARGIN, CHART_HEIGHT - 2 * CHART_MARGIN

    def x(step):
        return CHART_MARGIN + (step - low_step) / ((high_step - low_step) or 1) * width

    def y(value):
        return CHART_MARGIN + (high - value) / ((high - low) or 1) * height

    line = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
    return (
        f"<figure><figcaption>{_text(name)}: {low:.4g} .. {high:.4g}, "
        f"steps {low_step} .. {high_step}</figcaption>"
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{CHART_WIDTH}' height='{CHART_HEIGHT}'>"
        f"<rect width='100%' height='100%' fill='none' stroke='#ccc'/>"
        f"<polyline fill='none' stroke='#1f77b4' stroke-width='2' points='{line}'/>"
        "</svg></figure>"
    )
