"""The ``jsonl`` tracker: trackmux's own local, durable run log.

``<output_dir>/runs/<run name>/events.jsonl`` holds one JSON object a line: ``start``
(config), ``metrics`` (step, epoch, wall time), ``summary``, ``artifact`` and ``finish``
(status). Each record is flushed as it is written and fsynced at every save and at the end,
so a crash loses nothing that was logged. It runs inline on the loop thread (a line write is
cheaper than a queue hand-off) and is always available. Read it back with
:func:`trackmux.runlog.read_run`.
"""

from __future__ import annotations

import json
import math
import os
import time

from ..tracker import RunInfo, Tracker

EVENTS_FILE = "events.jsonl"
FORMAT_VERSION = 1


def _json_number(value):
    # JSON has no NaN/inf: write them as strings the reader turns back into floats
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class JsonlTracker(Tracker):
    name = "jsonl"
    synchronous = True

    def __init__(self, **settings):
        super().__init__(**settings)
        self.directory: str | None = None
        self._file = None

    def start(self, run: RunInfo):
        root = self.setting("dir", default=os.path.join(run.output_dir, "runs"))
        if run.resume:
            name = run.resume.get("run", run.name)
        else:
            # a new run under a name already used (the same run_name trained twice) gets a
            # directory of its own: one log, one run, each step once
            name = _unused_name(root, run.name)
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, EVENTS_FILE)
        # kept open for the whole run, closed in finish()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115
        if _ends_torn(path):  # a crash mid-line: never glue this run's start onto it
            self._file.write("\n")
        self._write(
            {
                "type": "start",
                "format": FORMAT_VERSION,
                "run": name,
                "kind": run.kind,
                "resumed": bool(run.resume),
                "step": run.step,
                "config": run.config,
            }
        )
        return {"run": name}

    def log_metrics(self, metrics, step, epoch=None):
        self._write({"type": "metrics", "step": step, "epoch": epoch, "metrics": metrics})

    def log_params(self, params):
        self._write({"type": "params", "params": params})

    def log_delivery(self, report):
        self._write({"type": "delivery", "trackers": report})

    def log_summary(self, metrics, step):
        self._write({"type": "summary", "step": step, "metrics": metrics})

    def log_artifact(self, path, kind, step):
        self._write({"type": "artifact", "step": step, "kind": kind, "path": os.path.abspath(path)})

    def flush(self):
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def finish(self, status):
        if self._file is None:
            return
        self._write({"type": "finish", "status": status})
        self.flush()
        self._file.close()
        self._file = None

    def where(self):
        if self.directory is None:
            return None
        return f"{os.path.join(self.directory, EVENTS_FILE)} (trackmux show {self.directory})"

    def _write(self, record: dict) -> None:
        record["time"] = time.time()
        if "metrics" in record:
            record["metrics"] = {k: _json_number(v) for k, v in record["metrics"].items()}
        self._file.write(json.dumps(record, default=str) + "\n")
        self._file.flush()


def _ends_torn(path: str) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _unused_name(root: str, name: str) -> str:
    candidate, number = name, 1
    while _has_records(os.path.join(root, candidate, EVENTS_FILE)):
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def _has_records(path: str) -> bool:
    return os.path.isfile(path) and os.path.getsize(path) > 0
