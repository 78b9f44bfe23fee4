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
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .runlog import RunLog, events_path, read_run
from .tracker import Tracker
from .values import redact_identity, redact_text

STATE_FILE = "sync-state.json"
LOCK_FILE = "sync-state.lock"
STATE_FORMAT = 1
#: the separator the jsonl tracker flattened the config with
JSONL_SEPARATOR = "/"


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
    from .replay import superseded as replaced

    return replaced(list(enumerate(records)))


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


# -- the state file -------------------------------------------------------------------------


def state_path(run_dir) -> str:
    return os.path.join(os.fspath(run_dir), STATE_FILE)


def delivered(entry: dict, total: int) -> bool:
    """Whether a tracker's state entry has every one of the journal's ``total`` records
    and its backend run closed (whatever the status)."""
    return int(entry.get("records") or 0) >= total and entry.get("finished") is not None


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
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_exclusive(run_dir))
        except SyncError:
            # the delivery process of a training still running holds the run; what it
            # delivered and closed needs nothing more
            results = _delivered(run_dir, names + [t.name for t in trackers or ()])
            if results is None:
                raise
            return results
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
        total = len(run.records)
        del run  # the replay reads the journal itself, record by record
        targets = [(name, None) for name in names] + [(t.name, t) for t in trackers or ()]
        save = _saver(run_dir, state)
        results = []
        for name, tracker in targets:
            results.append(
                _sync_one(
                    run_dir,
                    state,
                    save,
                    name,
                    tracker,
                    total,
                    tracker_config=tracker_config,
                    output_dir=os.fspath(output_dir),
                    close_timeout=close_timeout,
                    warn=warn,
                )
            )
    return results


def _delivered(run_dir: str, names: list[str]) -> list[SyncResult] | None:
    """Results saying "up to date" when every tracker in ``names`` has every record of the
    journal and its run closed (read without the lock: the state file is written whole);
    None otherwise."""
    from .replay import Journal

    total = Journal(run_dir).count_all()
    entries = read_state(run_dir)["trackers"]
    results = []
    for name in names:
        entry = entries.get(name) or {}
        if not delivered(entry, total):
            return None
        results.append(
            SyncResult(name, total=total, status=entry.get("status"), where=entry.get("where"))
        )
    return results


def _saver(run_dir: str, state: dict):
    """``save(name, entry)``: the state with ``entry`` as ``name``'s, written at once. Safe
    from several threads (the delivery process feeds each tracker on its own)."""
    lock = threading.Lock()

    def save(name: str, entry: dict) -> None:
        with lock:
            state["trackers"][name] = {**entry, "synced": time.time()}
            _write_state(run_dir, state)

    return save


def _sync_one(run_dir, state, save, name, tracker, total, **options) -> SyncResult:
    from .replay import Journal, Replay

    entry = dict(state["trackers"].get(name) or {})
    done = int(entry.get("records", 0))
    if done > total:
        raise SyncError(
            f"{state_path(run_dir)}: {name} holds {done} records of this log, "
            f"which has only {total}: was the log rewritten? Delete the state file to "
            "sync it into a new remote run"
        )
    replay = Replay(name, entry, lambda e: save(name, e), tracker=tracker, **options)
    result = SyncResult(name, total=total, status=entry.get("status"), where=entry.get("where"))
    try:
        replay.feed(Journal(run_dir).read())
        replay.end()
    except BaseException as error:
        replay.abort()
        _outcome(result, replay, entry)
        if not isinstance(error, Exception):
            raise
        result.error = f"{type(error).__name__}: {error}"
        return result
    _outcome(result, replay, entry)
    return result


def _outcome(result: SyncResult, replay, entry: dict) -> None:
    result.records = replay.sent
    result.sessions = replay.sessions
    result.status = entry.get("status")
    result.where = entry.get("where")
    result.missing_artifacts = replay.missing_artifacts


@contextlib.contextmanager
def _exclusive(run_dir: str, *, wait: bool = False):
    """One sync or delivery process of a run at a time: two would both send what the state
    lacks. ``wait``: block until the other one is done instead of refusing."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory lock; concurrent syncs are the caller's to avoid
        yield
        return
    with open(os.path.join(run_dir, LOCK_FILE), "a", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise SyncError(
                f"another trackmux sync, or the run's delivery process, is working on {run_dir}"
            ) from None
        yield  # the lock goes with the file's closing, even if this process is killed
