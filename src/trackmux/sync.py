"""Replaying a jsonl run log into other trackers: ``trackmux sync RUN_DIR --to mlflow``.

A run trained offline (``report_to=["jsonl"]``, or with a tracker that was down) keeps every
record in ``events.jsonl``. :func:`sync_run` sends those records to the named trackers through
:func:`trackmux.start_run`, session by session as they happened: the config, every metric at
its step and epoch, the summary, the artifacts whose directory still exists, and each
session's final status.

What was sent is written to ``RUN_DIR/sync-state.json``: per tracker, the identity of the
remote run, how many records of the log it holds and the status it was closed with. A second
sync sends only what the log gained since, into the same remote run; a log that gained
nothing sends nothing. A session without a finish record (the run crashed, or is still
running) is replayed as far as it goes and the remote run is closed as "killed"; when the log
later grows (the run went on, or was resumed from a checkpoint) the next sync reopens that
remote run and continues it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from .runlog import RunLog, events_path, read_run
from .tracker import KILLED, STATUSES, Tracker
from .values import redact_identity, redact_text

STATE_FILE = "sync-state.json"
LOCK_FILE = "sync-state.lock"
STATE_FORMAT = 1
#: the separator the jsonl tracker flattened the config with
JSONL_SEPARATOR = "/"
#: records sent between two flushes; the state is saved at each, so a sync that fails
#: resends at most this many records (into a backend that cannot drop them: twice)
FLUSH_EVERY = 500


class SyncError(Exception):
    """The run cannot be synced as asked (its state disagrees with its log, say)."""


@dataclass
class Session:
    """One start of the run log (train, a resumed train, an evaluate...) and its records:
    ``records[begin]`` is its start record, ``records[begin + 1:end]`` what it logged."""

    kind: str
    resumed: bool
    step: int
    config: dict[str, Any]
    begin: int
    end: int
    status: str | None = None
    started: float | None = None
    ended: float | None = None
    last_step: int | None = None
    points: int = 0


def split_sessions(records: list[dict]) -> list[Session]:
    """The sessions of a run log, in order. ``status`` is None for a session without a finish
    record; ``ended`` is then the time of its last record."""
    sessions: list[Session] = []
    for index, record in enumerate(records):
        kind = record.get("type")
        if kind == "start":
            sessions.append(
                Session(
                    kind=record.get("kind", "train"),
                    resumed=bool(record.get("resumed")),
                    step=int(record.get("step") or 0),
                    config=record.get("config") or {},
                    begin=index,
                    end=index + 1,
                    started=record.get("time"),
                    ended=record.get("time"),
                )
            )
            continue
        if not sessions:
            continue  # records before any start: not written by trackmux
        session = sessions[-1]
        session.end = index + 1
        session.ended = record.get("time", session.ended)
        if kind == "metrics":
            session.points += len(record.get("metrics") or {})
            session.last_step = record.get("step", session.last_step)
        elif kind == "finish":
            session.status = record.get("status")
    return sessions


def superseded(records: list[dict]) -> set[int]:
    """Indexes of the metrics records a later resumed training replaced: points logged after
    the checkpoint it resumed from (the rule of :func:`trackmux.runlog.read_run`)."""
    dropped: set[int] = set()
    resumed_at = math.inf
    for index in range(len(records) - 1, -1, -1):
        record = records[index]
        kind = record.get("type")
        if kind == "metrics" and record.get("step", 0) > resumed_at:
            dropped.add(index)
        elif kind == "start" and record.get("resumed") and record.get("kind") == "train":
            resumed_at = min(resumed_at, record.get("step") or 0)
    return dropped


def _same_step(records: list[dict], index: int, step) -> bool:
    """Whether ``records[index]`` is a metrics record at ``step``."""
    if index >= len(records):
        return False
    record = records[index]
    return record.get("type") == "metrics" and record.get("step") == step


def nested_config(config: dict[str, Any]) -> dict[str, Any]:
    """The jsonl log's flat config (``model/layers``) nested again, so that each tracker
    flattens it with its own separator (MLflow: ``model.layers``), as in a live run. Kept flat
    when a key is both a value and a parent (``a`` and ``a/b``)."""
    nested: dict[str, Any] = {}
    for key, value in config.items():
        parts = str(key).split(JSONL_SEPARATOR)
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                return dict(config)
            node = child
        if parts[-1] in node:
            return dict(config)
        node[parts[-1]] = value
    return nested


def _number(value):
    return float(value) if isinstance(value, str) else value


# -- the state file -------------------------------------------------------------------------


def state_path(run_dir) -> str:
    return os.path.join(os.fspath(run_dir), STATE_FILE)


def read_state(run_dir) -> dict[str, Any]:
    """The sync state of a run directory (empty when it was never synced)."""
    path = state_path(run_dir)
    if not os.path.exists(path):
        return {"format": STATE_FORMAT, "trackers": {}}
    with open(path, encoding="utf-8") as handle:
        try:
            state = json.load(handle)
        except json.JSONDecodeError as error:
            raise SyncError(
                f"{path} is not valid JSON ({error}); delete it to sync anew"
            ) from error
    state.setdefault("trackers", {})
    return state


def _write_state(run_dir, state: dict) -> None:
    # written whole then renamed: a sync killed mid-write leaves the previous state intact
    path = state_path(run_dir)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        # no credential is kept: a URI's userinfo in an identity or a "where" (one written by
        # an older trackmux included)
        json.dump(redact_identity(state), handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.replace(temporary, path)


def _fingerprint(run: RunLog) -> dict[str, Any]:
    first = run.records[0] if run.records else {}
    return {"run": first.get("run"), "time": first.get("time")}


# -- replay ---------------------------------------------------------------------------------


@dataclass
class SyncResult:
    """What one tracker got from one sync."""

    tracker: str
    records: int = 0
    sessions: int = 0
    total: int = 0
    status: str | None = None
    where: str | None = None
    missing_artifacts: list[str] = field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        return redact_text(self._line())

    def _line(self) -> str:
        where = f" -> {self.where}" if self.where else ""
        if self.error:
            return f"{self.tracker}: FAILED after {self.records} record(s): {self.error}{where}"
        if not self.records and not self.sessions:
            return f"{self.tracker}: up to date ({self.total} records, {self.status}){where}"
        text = (
            f"{self.tracker}: sent {self.records} record(s) in {self.sessions} session(s), "
            f"{self.total} in all, closed {self.status}"
        )
        if self.missing_artifacts:
            text += f", {len(self.missing_artifacts)} artifact(s) gone"
        return text + where


def default_output_dir(run_dir) -> str:
    """Where the run's trainer wrote (``<output_dir>/runs/<run>``): trackers that keep local
    files (TensorBoard, MLflow's default store) put them beside the run's own."""
    run_dir = os.path.abspath(os.fspath(run_dir))
    parent = os.path.dirname(run_dir)
    if os.path.basename(parent) == "runs":
        return os.path.dirname(parent)
    return run_dir


def sync_run(
    run_dir,
    to=(),
    *,
    trackers: list[Tracker] | None = None,
    tracker_config: dict[str, dict] | None = None,
    output_dir=None,
    close_timeout: float = 60.0,
    warn=None,
) -> list[SyncResult]:
    """Replay the run log in ``run_dir`` into the trackers named in ``to`` (plugin names) and
    the ``trackers`` given as objects; returns one :class:`SyncResult` each.

    Each tracker is replayed on its own, so one that fails neither stops nor spoils the
    others; its state records what reached it. ``warn`` receives a line for each artifact
    that no longer exists (default: ignored)."""
    names = [to] if isinstance(to, str) else list(to)
    if "jsonl" in names or any(t.name == "jsonl" for t in trackers or ()):
        raise ValueError("cannot sync into jsonl: the run log is the source of the sync")
    log_file = events_path(run_dir)
    if not os.path.isfile(log_file):
        raise FileNotFoundError(f"no run log at {log_file}")
    run_dir = os.path.dirname(os.path.abspath(log_file))
    with _exclusive(run_dir):
        run = read_run(run_dir)
        if output_dir is None:
            output_dir = default_output_dir(run_dir)
        state = read_state(run_dir)
        fingerprint = _fingerprint(run)
        if state["trackers"] and state.get("log") not in (None, fingerprint):
            raise SyncError(
                f"{state_path(run_dir)} was written for another run log ({state['log']}, this "
                f"log starts with {fingerprint}); delete it to sync this log into new remote runs"
            )
        state["format"] = STATE_FORMAT
        state["log"] = fingerprint
        targets = [(name, None) for name in names] + [(t.name, t) for t in trackers or ()]
        results = []
        for name, tracker in targets:
            replay = _Replay(
                run, name, tracker, tracker_config, os.fspath(output_dir), close_timeout, warn
            )
            results.append(replay.replay(state, lambda: _write_state(run_dir, state)))
    return results


@contextlib.contextmanager
def _exclusive(run_dir: str):
    """One sync of a run at a time: two would both send what the state lacks."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; concurrent syncs are the caller's to avoid
        yield
        return
    with open(os.path.join(run_dir, LOCK_FILE), "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyncError(f"another trackmux sync of {run_dir} is running") from None
        yield  # the lock goes with the file's closing, even if this process is killed


class _Replay:
    """One tracker's replay: each session not (fully) sent yet goes through its own
    ``start_run``, strict, so that a failure stops the replay where the state says."""

    def __init__(self, run, name, tracker, tracker_config, output_dir, close_timeout, warn):
        self.run = run
        self.name = name
        self.tracker = tracker
        self.tracker_config = {name: (tracker_config or {}).get(name) or {}}
        self.output_dir = output_dir
        self.close_timeout = close_timeout
        self.warn = warn or (lambda line: None)
        self.dropped = superseded(run.records)
        self.entry: dict[str, Any] = {}
        self.save = None

    def replay(self, state: dict, save) -> SyncResult:
        self.entry = entry = state["trackers"].get(self.name) or {}

        def save_entry():
            entry["synced"] = time.time()
            state["trackers"][self.name] = entry
            save()

        self.save = save_entry
        done = int(entry.get("records", 0))
        total = len(self.run.records)
        result = SyncResult(self.name, total=total, status=entry.get("status"))
        result.where = entry.get("where")
        if done > total:
            raise SyncError(
                f"{state_path(self.run.path)}: {self.name} holds {done} records of this log, "
                f"which has only {total}: was the log rewritten? Delete the state file to "
                "sync it into a new remote run"
            )
        for session in split_sessions(self.run.records):
            if session.end <= done:
                continue
            try:
                self._session(session, done, result)
            except Exception as error:
                result.error = f"{type(error).__name__}: {error}"
                return result
            done = session.end
        return result

    def _session(self, session: Session, done: int, result: SyncResult) -> None:
        """Send the records of ``session`` not sent yet, then close the remote run with the
        session's status ("killed" without a finish record)."""
        from .run import start_run

        entry, records = self.entry, self.run.records
        if done > session.begin:
            # a session an earlier sync sent part of: reopen the remote run where it stopped
            first, step = done, entry.get("step", session.step)
        else:
            first, step = session.begin + 1, session.step
        identity = entry.get("identity")
        live = start_run(
            report_to=[] if self.tracker is not None else [self.name],
            trackers=[self.tracker] if self.tracker is not None else None,
            tracker_config=self.tracker_config if self.tracker is None else None,
            config=nested_config(session.config),
            output_dir=self.output_dir,
            run_name=self.run.name,
            resume={self.name: identity} if identity else None,
            step=step,
            kind=session.kind,
            strict=True,
            close_timeout=self.close_timeout,
            # the journal is what is being replayed: a sync writes no journal of its own
            run_journal=False,
        )
        unconfirmed = 0
        try:
            for index in range(first, session.end):
                record = records[index]
                unconfirmed += self._send(live, record, index, result)
                if record.get("type") == "metrics":
                    step = record.get("step", step)
                if unconfirmed >= FLUSH_EVERY and not _same_step(records, index + 1, step):
                    # what a flush confirmed is not sent again if the sync fails later; only
                    # between steps, so that a continuation reopening at ``step`` (which a
                    # backend may purge after) holds every point of that step once
                    live.flush()
                    self._progress(live, result, unconfirmed, records=index + 1, step=step)
                    unconfirmed = 0
            live.flush()
        except BaseException:
            try:
                live.finish(KILLED)
            except Exception:
                pass  # the error that stopped the replay is the one to report
            self._remember(live)
            self.entry["status"] = result.status = KILLED
            self.save()
            raise
        status = session.status if session.status in STATUSES else KILLED
        live.finish(status)
        result.sessions += 1
        result.status = status
        self.entry.update(status=status, finished=session.status is not None)
        self._progress(live, result, unconfirmed, records=session.end, step=step)

    def _progress(self, live, result: SyncResult, sent: int, *, records: int, step) -> None:
        result.records += sent
        self.entry.update(records=records, step=step)
        self._remember(live)
        result.where = self.entry.get("where")
        self.save()

    def _remember(self, live) -> None:
        identity = live.identities.get(self.name)
        if identity is not None:
            self.entry["identity"] = identity
        where = dict(live.where()).get(self.name)
        if where:
            self.entry["where"] = where

    def _send(self, live, record: dict, index: int, result: SyncResult) -> int:
        kind = record.get("type")
        if kind == "metrics":
            if index in self.dropped:
                return 0
            metrics = {k: _number(v) for k, v in (record.get("metrics") or {}).items()}
            live.log(metrics, step=record.get("step"), epoch=record.get("epoch"))
        elif kind == "summary":
            metrics = {k: _number(v) for k, v in (record.get("metrics") or {}).items()}
            live.log_summary(metrics, step=record.get("step"))
        elif kind == "params":
            live.log_params(nested_config(record.get("params") or {}))
        elif kind == "artifact":
            path = record.get("path")
            if not path or not os.path.exists(path):
                result.missing_artifacts.append(str(path))
                self.warn(f"{self.name}: artifact {path} no longer exists: not sent")
                return 0
            live.log_artifact(path, kind=record.get("kind", "checkpoint"), step=record.get("step"))
        else:
            return 0  # start, finish and the original run's delivery figures
        return 1
