"""The ``jsonl`` tracker: trackmux's own local, durable run log.

``<output_dir>/runs/<run name>/events.jsonl`` holds one JSON object a line: ``start``
(config), ``metrics`` (step, epoch, wall time), ``summary``, ``artifact`` and ``finish``
(status). Each record is flushed as it is written and fsynced at every save and at the end,
so a crash loses nothing that was logged. It runs inline on the loop thread (a line write is
cheaper than a queue hand-off) and is always available. Read it back with
:func:`trackmux.runlog.read_run`.

The journal is never silently given up on. A write that fails (a full disk, a quota, an I/O
error) keeps the record, and those after it, in a bounded buffer, in order, and retries them
with each later record, at each flush and at the end; the user is warned at once and then at
most once a minute with the count waiting. When the buffer is full, further ``metrics``
records are dropped (counted; the start, params, summary and finish records are always kept),
and once the journal can be written again a ``dropped`` record says how many were lost; so do
the finish record and the end-of-run delivery report. With
``TrainingArguments.journal_errors="stop"`` (tracker setting ``errors``) a write error stops
training with :class:`~trackmux.delivery.JournalError` instead.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time

from ..delivery import JournalError
from ..tracker import RunInfo, Tracker, run_dir_name

logger = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"
FORMAT_VERSION = 1
#: records kept in memory while the journal cannot be written (``buffer`` setting)
BUFFER_RECORDS = 100_000
#: seconds between two warnings that the journal still cannot be written
WARN_EVERY = 60.0
JOURNAL_ERROR_MODES = ("retry", "stop")


#: json.dumps(record, default=str) without building an encoder for every record
_ENCODER = json.JSONEncoder(default=str)


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
        self._path: str | None = None
        self._pending: collections.deque[bytes] = collections.deque()  # lines not written yet
        self._mode = "retry"
        self._limit = BUFFER_RECORDS
        #: records lost because the buffer was full while the journal could not be written
        self.dropped_records = 0
        self._dropped_unwritten = 0  # dropped records the journal does not mention yet
        self._failing: OSError | None = None  # the error of the outage going on, if any
        self._warned_at: float | None = None
        self._stopped = False  # a journal_errors="stop" error was raised already

    identity_paths = ("run",)  # relative to the runs directory

    def identity_root(self, run: RunInfo) -> str:
        return os.fspath(self.setting("dir", default=os.path.join(run.output_dir, "runs")))

    def start(self, run: RunInfo):
        self._mode = self.setting("errors", default=getattr(run.args, "journal_errors", "retry"))
        if self._mode not in JOURNAL_ERROR_MODES:
            raise ValueError(
                f"jsonl tracker: errors={self._mode!r} must be one of {JOURNAL_ERROR_MODES}"
            )
        self._limit = int(self.setting("buffer", default=BUFFER_RECORDS, cast=int))
        root = self.identity_root(run)
        if run.resume and run.resume.get("run"):
            # trackmux vetted it: inside root (Tracker.identity_paths), absolute
            name = run.resume["run"]
            name = os.path.relpath(name, os.path.realpath(root)) if os.path.isabs(name) else name
        else:
            # a new run under a name already used (the same run_name trained twice) gets a
            # directory of its own: one log, one run, each step once; the directory name is
            # made safe (run_dir_name), the run name itself is kept in the start record
            name = _unused_name(root, run_dir_name(run.name))
        self.directory = os.path.join(root, name)
        os.makedirs(self.directory, exist_ok=True)
        path = self._path = os.path.join(self.directory, EVENTS_FILE)
        # kept open for the whole run, closed in finish(); unbuffered, so a failed write
        # leaves nothing half-written in a buffer that a later flush would repeat
        self._file = open(path, "ab", buffering=0)  # noqa: SIM115
        if _ends_torn(path):  # a crash mid-line: never glue this run's start onto it
            self._pending.append(b"\n")
        self._write(
            {
                "type": "start",
                "format": FORMAT_VERSION,
                "run": name,
                "name": run.name,
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
        if self._file is None or not self._drain():
            return
        try:
            os.fsync(self._file.fileno())
        except OSError as error:
            self._write_failed(error)

    def finish(self, status):
        if self._file is None:
            return
        record = {"type": "finish", "status": status}
        if self.dropped_records:
            record["dropped"] = self.dropped_records
        self._write(record)
        self.flush()
        if self._pending or self.dropped_records:
            logger.warning(
                "run journal %s: %d record(s) were dropped while it could not be written%s",
                self._path,
                self.dropped_records,
                f", and the last {len(self._pending)} could not be written at the end "
                f"({self._failing})"
                if self._pending
                else "",
            )
        self._file.close()
        self._file = None

    def where(self):
        if self.directory is None:
            return None
        return f"{os.path.join(self.directory, EVENTS_FILE)} (trackmux show {self.directory})"

    def delivery_figures(self) -> dict:
        """What the delivery report adds for the journal: records dropped, and waiting."""
        return {"dropped": self.dropped_records, "unwritten": len(self._pending)}

    def _write(self, record: dict) -> None:
        record["time"] = time.time()
        if "metrics" in record:
            record["metrics"] = {k: _json_number(v) for k, v in record["metrics"].items()}
        line = (_ENCODER.encode(record) + "\n").encode("utf-8")
        if len(self._pending) >= self._limit and record["type"] == "metrics":
            # the buffer is full: lose this point, keep the records that frame the run
            self.dropped_records += 1
            self._dropped_unwritten += 1
            self._drain()
            return
        self._pending.append(line)
        self._drain()

    def _drain(self) -> bool:
        """Write what waits, in order; False (and the error handled) if the file refuses."""
        pending, file = self._pending, self._file
        while pending:
            data = pending[0]
            try:
                written = file.write(data)
            except OSError as error:
                self._write_failed(error)
                return False
            if written is not None and written < len(data):
                pending[0] = data[written:]  # a short write: the rest of the line next
            else:
                pending.popleft()
        if self._failing is not None:
            logger.warning(
                "run journal %s can be written again; nothing waits any more (%d record(s) "
                "dropped in all)",
                self._path,
                self.dropped_records,
            )
            self._failing = None
            self._warned_at = None
        if self._dropped_unwritten:
            dropped, self._dropped_unwritten = self._dropped_unwritten, 0
            note = {"type": "dropped", "records": dropped, "time": time.time()}
            pending.append((json.dumps(note) + "\n").encode("utf-8"))
            return self._drain()
        return True

    def _write_failed(self, error: OSError) -> None:
        self._failing = error
        if self._mode == "stop" and not self._stopped:
            self._stopped = True
            raise JournalError(
                f"the run journal {self._path} could not be written ({error}); training stops "
                "(TrainingArguments.journal_errors='stop'; 'retry' keeps the records in memory "
                "and retries instead)"
            ) from error
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY:
            return
        self._warned_at = now
        logger.warning(
            "run journal %s cannot be written (%s): %d record(s) wait in memory and are "
            "retried with each new record (up to %d; beyond that metrics are dropped, %d so "
            "far); training goes on",
            self._path,
            error,
            len(self._pending),
            self._limit,
            self.dropped_records,
        )


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
