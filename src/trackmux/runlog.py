"""Reading a jsonl run log back: ``read_run(path)`` gives the config, every metric at every
step, the summary, artifacts and the final status of a run written by the jsonl tracker."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .trackers.jsonl import EVENTS_FILE


@dataclass
class RunLog:
    """A run as its jsonl log recorded it.

    ``metrics`` maps each metric name to ``[(step, value), ...]`` in logging order;
    ``status`` is the last ``finish`` status, or None while the run is open or after a crash.
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
    records: list[dict[str, Any]] = field(default_factory=list)

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


def read_run(path) -> RunLog:
    """Read a run directory (or its events.jsonl). A truncated last line (a crash while
    writing) is ignored."""
    file_path = events_path(path)
    run = RunLog(path=os.path.dirname(os.path.abspath(file_path)))
    with open(file_path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            run.records.append(record)
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
                for name, value in record["metrics"].items():
                    run.metrics.setdefault(name, []).append((record["step"], _number(value)))
            elif kind == "summary":
                run.summary.update({k: _number(v) for k, v in record["metrics"].items()})
            elif kind == "artifact":
                run.artifacts.append(record)
            elif kind == "finish":
                run.status = record.get("status")
                run.statuses.append(run.status)
                run.ended = record.get("time")
    return run


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
