"""Reading a jsonl run log back: ``read_run(path)`` gives the config, every metric at every
step, the summary, artifacts and the final status of a run written by the jsonl tracker."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from .trackers.jsonl import EVENTS_FILE


@dataclass
class RunLog:
    """A run as its jsonl log recorded it.

    ``metrics`` maps each metric name to ``[(step, value), ...]`` in logging order;
    ``status`` is the last ``finish`` status, or None while the run is open or after a crash
    (``finished`` says which).
    ``sessions`` counts the starts (train, then each reopening by evaluate/predict/resume).
    When a training resumed from a checkpoint, points logged after that checkpoint by the
    interrupted run are dropped (they are in ``records``), so each step appears once.
    """

    path: str
    name: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    summary: dict[str, float] = field(default_factory=dict)
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    status: str | None = None
    statuses: list[str] = field(default_factory=list)
    sessions: int = 0
    started: float | None = None
    ended: float | None = None
    #: per tracker, what delivering to it cost (the run's last ``delivery`` record)
    delivery: dict[str, dict[str, Any]] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    #: line numbers (1-based) that could not be read and were skipped with a warning
    skipped: list[int] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        """Whether the last session was closed (a finish record): False while a run is still
        going and after its process was killed (``kill -9``, a power cut)."""
        return self.status is not None

    def history(self, name: str) -> list[tuple[int, float]]:
        return self.metrics.get(name, [])

    def last(self, name: str):
        history = self.metrics.get(name)
        return history[-1][1] if history else None


def _number(value):
    return float(value) if isinstance(value, str) else value


def events_path(path) -> str:
    path = os.fspath(path)
    return path if os.path.isfile(path) else os.path.join(path, EVENTS_FILE)


class RunLogWarning(UserWarning):
    """A run log had lines that could not be read (a crash while writing, or damage)."""


def read_run(path) -> RunLog:
    """Read a run directory (or its events.jsonl).

    Never fails on the content: a torn last line (the process died while writing it) and any
    damaged line are skipped with a :class:`RunLogWarning` that says which line, so every
    record before them is still read. ``status`` stays None when no finish record follows
    the last start: the run is still going, or its process died (see :attr:`RunLog.finished`).
    """
    file_path = events_path(path)
    run = RunLog(path=os.path.dirname(os.path.abspath(file_path)))
    with open(file_path, encoding="utf-8", errors="replace") as handle:
        lines = handle.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
            _apply(run, record)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            run.skipped.append(number)
            torn = number == len(lines) and not line.endswith("\n")
            what = "torn last line (the process stopped while writing it)" if torn else "line"
            warnings.warn(
                f"{file_path}:{number}: skipped a {what} that is not a valid record "
                f"({type(error).__name__}: {error}); the {number - 1} line(s) before it were read",
                RunLogWarning,
                stacklevel=2,
            )
            continue
        run.records.append(record)
    return run


def _apply(run: RunLog, record: dict) -> None:
    kind = record.get("type")
    if kind == "start":
        if record.get("resumed") and record.get("kind") == "train":
            _forget_after(run, record.get("step", 0))
        run.sessions += 1
        run.name = record.get("run", run.name)
        run.config.update(record.get("config") or {})
        run.started = run.started or record.get("time")
        run.status = None
    elif kind == "metrics":
        step = int(record["step"])
        points = [(name, _number(value)) for name, value in record["metrics"].items()]
        for name, value in points:
            run.metrics.setdefault(name, []).append((step, value))
    elif kind == "summary":
        run.summary.update({k: _number(v) for k, v in record["metrics"].items()})
    elif kind == "artifact":
        run.artifacts.append(record)
    elif kind == "params":  # added to the open run after its start
        run.config.update(record.get("params") or {})
    elif kind == "delivery":
        run.delivery = dict(record.get("trackers") or {})
    elif kind == "finish":
        run.status = record.get("status")
        run.statuses.append(run.status)
        run.ended = record.get("time")


def _forget_after(run: RunLog, step: int) -> None:
    """A training resumed from the checkpoint at ``step``: points the interrupted run logged
    after it were replaced by the resumed run's."""
    for name, history in run.metrics.items():
        run.metrics[name] = [(s, v) for s, v in history if s <= step]


def find_runs(output_dir) -> list[str]:
    """Run directories under ``<output_dir>/runs``, oldest first."""
    root = os.path.join(os.fspath(output_dir), "runs")
    if not os.path.isdir(root):
        return []
    runs = [os.path.join(root, name) for name in os.listdir(root)]
    runs = [path for path in runs if os.path.isfile(os.path.join(path, EVENTS_FILE))]
    return sorted(runs, key=lambda path: os.path.getmtime(os.path.join(path, EVENTS_FILE)))
