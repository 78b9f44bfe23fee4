"""The replay engine: the one code path that feeds a tracker from the run journal.

``trackmux sync`` (a finished or crashed run, read once), the delivery process (a run that is
still being written, followed as it grows) and its catch-up after a restart all go through
:class:`Replay`. Per tracker it keeps an entry in the run directory's state file
(``sync-state.json``): how many records of the journal reached the backend, the identity of
the backend's run, the status that run was closed with, and the last error. A replay always
starts from that entry: it reopens the recorded backend run and sends only the records after
the ones counted, so a second sync, a resumed training or a replacement delivery process
never opens a second backend run nor sends a record twice (a record counts once the tracker's
``flush`` confirmed it).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from .runlog import events_path
from .tracker import KILLED, STATUSES, Tracker

logger = logging.getLogger(__name__)

#: bytes of the journal a follower reads at once (about 5000 records): a backlog, after a
#: backend hung for an hour, is delivered in parts of bounded memory, each confirmed
READ_LIMIT = 1 << 20

#: records sent between two confirmations in a one-shot sync; the state is saved at each,
#: so a sync that fails resends at most this many records
FLUSH_EVERY = 500


class Journal:
    """Reads ``events.jsonl`` as it grows: each :meth:`read` returns the complete records
    appended since the last one, numbered as :func:`trackmux.runlog.read_run` numbers them (a
    line that is not a JSON object is skipped and not counted; a last line without its newline
    is being written and waits for the next read)."""

    def __init__(self, run_dir):
        self.path = events_path(run_dir)
        self.offset = 0
        self.count = 0

    def read(self, limit: int = -1) -> list[tuple[int, dict]]:
        """``limit``: read about that many bytes at most (whole lines; a longer line is
        read whole), so that a backlog is taken in parts of bounded memory."""
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(limit)
            while limit > 0 and len(data) >= limit and b"\n" not in data:
                more = handle.read(limit)  # one line longer than the limit
                if not more:
                    break
                data += more
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        records = []
        for line in data[: end + 1].split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8", errors="replace"))
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append((self.count, record))
                self.count += 1
        return records

    def count_all(self) -> int:
        """Read to the end; the records the journal holds."""
        while self.read(READ_LIMIT):
            pass
        return self.count


def superseded(records: list[tuple[int, dict]]) -> set[int]:
    """Indexes of the metrics records a later resumed training replaced: points logged after
    the checkpoint it resumed from (the rule of :func:`trackmux.runlog.read_run`)."""
    dropped: set[int] = set()
    resumed_at = float("inf")
    for index, record in reversed(records):
        kind = record.get("type")
        if kind == "metrics" and record.get("step", 0) > resumed_at:
            dropped.add(index)
        elif kind == "start" and record.get("resumed") and record.get("kind") == "train":
            resumed_at = min(resumed_at, record.get("step") or 0)
    return dropped


class Replay:
    """One tracker fed from the journal. :meth:`feed` takes records in journal order (those
    the state already counts are only read for their context), :meth:`end` closes a session
    the journal left open as killed. ``save`` is called with the tracker's state entry each
    time it changes. Raises what the tracker raised (the replay runs strict): the entry then
    says how far it got, and a new Replay built from it goes on from there."""

    def __init__(
        self,
        name: str,
        entry: dict[str, Any],
        save,
        *,
        tracker: Tracker | None = None,
        tracker_config: dict | None = None,
        output_dir: str,
        close_timeout: float = 60.0,
        give_up_after: float = 300.0,
        warn=None,
        follow: bool = False,
    ):
        self.name = name
        self.entry = entry
        self._save = save
        self.tracker = tracker
        self.tracker_config = {name: (tracker_config or {}).get(name) or {}}
        self.output_dir = output_dir
        self.close_timeout = close_timeout
        self.give_up_after = give_up_after
        self.warn = warn or (lambda line: None)
        self.follow = follow
        self.done = int(entry.get("records", 0))
        self.live = None  # the open run of the session being delivered
        self.start: dict | None = None  # that session's start record
        self.step = int(entry.get("step") or 0)
        self.unconfirmed = 0  # records sent since the last confirmed flush
        self.consumed = self.done  # records read past (sent, or nothing to send)
        self.sent = 0  # records this replay sent and saw confirmed
        self.sessions = 0  # sessions this replay closed
        self.missing_artifacts: list[str] = []
        #: whether the last record read closed its session (a finish record)
        self.closed = bool(entry.get("finished")) and entry.get("records") is not None

    # -- feeding ---------------------------------------------------------------------------

    def feed(self, records: list[tuple[int, dict]]) -> None:
        dropped = superseded(records)
        for position, (index, record) in enumerate(records):
            kind = record.get("type")
            if kind == "start":
                if index >= self.done:
                    self._close(KILLED, finished=False)  # the session before had no finish
                self.start = record
                if index >= self.done:
                    self.step, self.closed = int(record.get("step") or 0), False
                    self._open(self.step, resumed=False)
                    self.consumed = index + 1
                continue
            if index < self.done:
                continue
            self.consumed = index + 1
            if self.start is None or kind not in (
                "metrics",
                "summary",
                "params",
                "artifact",
                "finish",
            ):
                continue  # records before any start, the delivery figures: nothing to send
            if self.live is None:
                # a session an earlier replay sent part of: reopen its backend run there
                self._open(self.step, resumed=True)
            if kind == "finish":
                status = record.get("status")
                self._close(status if status in STATUSES else KILLED, finished=True)
                continue
            if index in dropped:
                continue
            self.unconfirmed += self._send(record)
            if kind == "metrics":
                self.step = record.get("step", self.step)
            if (
                not self.follow
                and self.unconfirmed >= FLUSH_EVERY
                and not _same_step(records, position + 1, self.step)
            ):
                # only between steps, so that a continuation reopening at ``step`` (which a
                # backend may purge after) holds every point of that step once
                self.confirm()
        if self.follow and self.live is not None and self.consumed > self.done:
            self.confirm()

    def end(self) -> None:
        """The journal will not grow: close a session it left open as killed."""
        if self.live is not None:
            self._close(KILLED, finished=False)
        elif self.consumed > self.done:
            self._progress()

    # -- the backend run -----------------------------------------------------------------------

    def _open(self, step: int, *, resumed: bool) -> None:
        from .run import start_run
        from .sync import nested_config

        start = self.start
        identity = self.entry.get("identity")
        self.live = start_run(
            report_to=[] if self.tracker is not None else [self.name],
            trackers=[self.tracker] if self.tracker is not None else None,
            tracker_config=self.tracker_config if self.tracker is None else None,
            config=nested_config(start.get("config") or {}),
            output_dir=self.output_dir,
            run_name=start.get("name") or start.get("run"),
            resume={self.name: identity} if identity else None,
            step=step,
            kind=start.get("kind", "train"),
            strict=True,
            close_timeout=self.close_timeout,
            stall_timeout=self.give_up_after,
            # the journal is what is being replayed: a replay writes no journal of its own
            run_journal=False,
        )
        if self.follow:
            self.confirm()  # the backend run exists now: its identity is in the state

    def confirm(self) -> None:
        """Wait until the tracker made durable what it was sent (a flush), then count it."""
        live = self.live
        began = time.monotonic()
        while True:
            live.flush(min(self.close_timeout, self.give_up_after))
            workers = live.workers
            if all(w.start_returned.is_set() and not w.pending and not w.stuck for w in workers):
                break
            if any(w.disabled for w in workers):
                from .delivery import TrackerError

                raise TrackerError(f"tracker {self.name!r} could not start")
            if time.monotonic() - began >= self.give_up_after:
                from .delivery import TrackerError

                raise TrackerError(
                    f"tracker {self.name!r} confirmed nothing for {self.give_up_after:g} s"
                )
            time.sleep(0.2)
        self._progress()

    def _close(self, status: str, *, finished: bool) -> None:
        if self.live is None:
            return
        # a record that failed raises here, and the run is closed as killed (abort)
        self.live.flush(self.close_timeout)
        live, self.live = self.live, None
        try:
            live.finish(status)
        finally:
            self._remember(live)
        self.sessions += 1
        self.closed = finished
        self.entry.update(status=status, finished=finished)
        self._progress()

    def abort(self) -> None:
        """The replay failed: close the backend run as killed, keep what was confirmed."""
        live, self.live = self.live, None
        if live is not None:
            try:
                live.finish(KILLED)
            except Exception:
                pass  # the error that stopped the replay is the one to report
            self._remember(live)
        self.entry["status"] = KILLED
        self._save(self.entry)

    def _progress(self) -> None:
        self.sent += self.unconfirmed
        self.unconfirmed = 0
        self.done = self.consumed
        self.entry.update(records=self.done, step=self.step)
        self.entry.pop("error", None)
        self.entry.pop("gave_up", None)
        if self.live is not None:
            self._remember(self.live)
        self._save(self.entry)

    def _remember(self, live) -> None:
        identity = live.identities.get(self.name)
        if identity is not None:
            self.entry["identity"] = identity
        where = dict(live.where()).get(self.name)
        if where:
            self.entry["where"] = where

    def _send(self, record: dict) -> int:
        import os

        from .sync import nested_config

        live, kind = self.live, record.get("type")
        if kind == "metrics":
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
                self.missing_artifacts.append(str(path))
                self.warn(f"{self.name}: artifact {path} no longer exists: not sent")
                return 0
            live.log_artifact(path, kind=record.get("kind", "checkpoint"), step=record.get("step"))
        return 1


def _number(value):
    return float(value) if isinstance(value, str) else value


def _same_step(records: list[tuple[int, dict]], position: int, step) -> bool:
    if position >= len(records):
        return False
    record = records[position][1]
    return record.get("type") == "metrics" and record.get("step") == step
