"""The ``csvlog`` tracker: every metric of a run as one row of a CSV file.

``<dir>/<run name>/`` holds ``metrics.csv`` (columns ``step,name,value``), ``params.json``
(the run's flat config), ``status.txt`` ("running", then "success", "failed" or "killed")
and, when an artifact policy asks for it, copies of checkpoints under ``artifacts/``.
``<dir>`` is ``<output_dir>/csvlog`` unless the ``dir`` setting says otherwise. A training
resumed from a checkpoint reopens its run and appends, after dropping the rows the
interrupted attempt logged past that checkpoint.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

from trackmux import RunInfo, Tracker

METRICS_FILE = "metrics.csv"
PARAMS_FILE = "params.json"
STATUS_FILE = "status.txt"
ARTIFACTS_DIR = "artifacts"
HEADER = ("step", "name", "value")


class CsvLogTracker(Tracker):
    name = "csvlog"
    # The backend is the standard library, so there is nothing to require. A plugin for a
    # real backend names it here and trackmux checks it without importing it, e.g.
    # requires = ("tabulate>=0.9",)
    requires = ()
    # TRACKMUX_CSVLOG_ARTIFACTS=checkpoint overrides TrainingArguments.tracker_artifacts
    artifacts_env = "TRACKMUX_CSVLOG_ARTIFACTS"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.directory: str | None = None
        self._file = None
        self._writer = None

    def start(self, run: RunInfo):
        # the identity returned below comes back as run.resume: reopen that run, whatever
        # name this session was given
        name = (run.resume or {}).get("run", run.name)
        root = self.setting(
            "dir", default=os.path.join(run.output_dir, "csvlog"), env="TRACKMUX_CSVLOG_DIR"
        )
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, METRICS_FILE)
        fresh = not os.path.exists(path) or os.path.getsize(path) == 0
        if run.resume and run.kind == "train" and not fresh:
            # the interrupted attempt may have logged steps after the checkpoint this training
            # resumes from: drop them, they are about to be logged again
            _drop_rows_after(path, run.step)
        # append mode: a resumed run adds its rows after those already there
        self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        if fresh:
            self._writer.writerow(HEADER)
        self._write_params(run.config)
        self._write_status("running")
        return {"run": name}

    def log_metrics(self, metrics, step, epoch=None):
        self._writer.writerows((step, name, value) for name, value in metrics.items())

    def log_artifact(self, path, kind, step):
        target = os.path.join(self.directory, ARTIFACTS_DIR, os.path.basename(path))
        shutil.copytree(path, target, dirs_exist_ok=True)

    def flush(self):
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def finish(self, status):
        # trackmux has called flush() right before this
        if self._file is None:
            return
        self._file.close()
        self._file = self._writer = None
        self._write_status(status)

    def where(self):
        if self.directory is None:
            return None
        return os.path.join(self.directory, METRICS_FILE)

    def _write_params(self, config):
        path = os.path.join(self.directory, PARAMS_FILE)
        params = {}
        if os.path.exists(path):  # a reopened run keeps what earlier sessions recorded
            with open(path, encoding="utf-8") as handle:
                params = json.load(handle)
        params.update(config)
        _replace(path, json.dumps(params, indent=2, sort_keys=True, default=str) + "\n")

    def _write_status(self, status):
        _replace(os.path.join(self.directory, STATUS_FILE), status + "\n")


def _replace(path, text):
    # write then rename, so a crash never leaves a half-written file behind
    temporary = path + ".tmp"
    with open(temporary, "w", newline="", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)


def _drop_rows_after(path, step):
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    # a row cut short by a crash is dropped too: the next append would run into it
    kept = [rows[0], *(row for row in rows[1:] if len(row) == 3 and int(row[0]) <= step)]
    if len(kept) < len(rows):
        text = io.StringIO()
        csv.writer(text).writerows(kept)
        _replace(path, text.getvalue())


def read_metrics(run_dir) -> dict[str, list[tuple[int, float]]]:
    """``{name: [(step, value), ...]}`` from a run directory, in the order logged."""
    metrics: dict[str, list[tuple[int, float]]] = {}
    with open(os.path.join(run_dir, METRICS_FILE), newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            metrics.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return metrics
