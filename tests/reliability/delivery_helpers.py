"""A tracker for the delivery-process tests: it runs in whichever process feeds it and
appends every call it receives to a file, so a test reads what reached it from either
process; it can hang like a dead backend."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from trackmux import Tracker
from trackmux.runlog import find_runs, read_run
from trackmux.sync import read_state


class JournalRecorder(Tracker):
    """Appends each call to the file of its ``path`` setting (a JSON line with the process
    id); ``log_metrics`` blocks while the file of its ``hold`` setting exists."""

    name = "journal-recorder"
    out_of_process = True

    def start(self, run):
        torch = "torch" in sys.modules
        if self.setting("notice"):  # what a backend's plugin says, e.g. "logging offline"
            logging.getLogger(f"trackmux.{self.name}").info(self.setting("notice"))
        self._write("start", session=run.kind, step=run.step, resume=run.resume, torch=torch)
        return run.resume or {"id": f"recorded-{os.getpid()}-{time.time_ns()}"}

    def log_metrics(self, metrics, step, epoch=None):
        hold = self.setting("hold")
        while hold and os.path.exists(hold):
            time.sleep(0.02)
        self._write("metrics", step=step, metrics=metrics)

    def log_summary(self, metrics, step):
        self._write("summary", step=step, metrics=metrics)

    def finish(self, status):
        self._write("finish", status=status)

    def _write(self, what, **fields):
        with open(self.setting("path"), "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"type": what, "pid": os.getpid(), **fields}) + "\n")


def received(path) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def delivery_entry(run_dir, name=JournalRecorder.name) -> dict:
    return read_state(run_dir)["trackers"].get(name) or {}


def wait_until_closed(run_dir, name=JournalRecorder.name, *, sessions_closed=None, timeout=300.0):
    """Wait until the delivery process delivered the whole journal to ``name`` and closed its
    run (the state file says so); a deadline only so that a broken process fails the test."""
    from trackmux.replay import Journal

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = delivery_entry(run_dir, name)
        if entry.get("records", -1) >= Journal(run_dir).count_all() and "finished" in entry:
            return entry
        time.sleep(0.05)
    raise AssertionError(f"{name} was not delivered within {timeout} s: {entry}")


def only_run(output_dir) -> str:
    [run_dir] = find_runs(output_dir)
    return run_dir


def journal_points(run_dir) -> list[tuple[int, dict]]:
    return [(r["step"], r["metrics"]) for r in read_run(run_dir).records if r["type"] == "metrics"]
