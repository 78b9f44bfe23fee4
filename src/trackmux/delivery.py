"""Asynchronous, isolated delivery of tracker calls: one bounded queue and one worker thread
per tracker, so the training loop never waits on a backend's network or disk, and a broken
backend never stops training (unless strict mode asks for exactly that)."""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback

from .tracker import Tracker

logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
#: seconds the loop waits on a full queue before it warns
STALL_WARNING_AFTER = 5.0
#: most metrics records handed to a tracker in one ``log_metrics_batch`` call
MAX_BATCH = 1000
_STOP = object()
_RECORDS = ("log_metrics", "log_summary", "log_params", "log_artifact")


class TrackerError(RuntimeError):
    """A tracker failed while strict mode (``tracker_strict`` / ``TRACKMUX_STRICT=1``) is on."""


class _Flush:
    __slots__ = ("done",)

    def __init__(self):
        self.done = threading.Event()


class TrackerWorker:
    """Runs one tracker's calls in order, off the loop.

    ``submit`` never blocks while the queue has room; when it is full the loop waits (nothing
    is dropped) and says so once per stall. An exception inside the tracker is reported once
    with its traceback; after ``MAX_CONSECUTIVE_FAILURES`` in a row, or a failed ``start``, the
    tracker is disabled and the rest of training goes on without it.
    """

    def __init__(
        self,
        tracker: Tracker,
        queue_size: int = 10000,
        strict: bool = False,
        on_stall=None,
    ):
        self.tracker = tracker
        self.name = tracker.name or type(tracker).__name__
        self.strict = strict
        self.disabled = False
        self.failures = 0
        self.reported = False
        self.error: BaseException | None = None
        self.identity: dict | None = None
        self.started = False
        self._abandoned = False
        self.stalls = 0
        self.stalled_seconds = 0.0
        #: called on the loop thread as ``on_stall(worker, waiting)`` when the loop starts
        #: (True) and stops (False) waiting for room in this tracker's queue
        self.on_stall = on_stall
        # the hub's accounting: what this tracker costs and how far behind it gets
        self.busy_seconds = 0.0
        self.max_pending = 0
        self.submitted = 0
        self.delivered = 0
        self.failed_calls = 0
        self.abandoned = 0
        self.batch_window = tracker.batch_window_seconds()
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        if not tracker.synchronous:
            self._queue = queue.Queue(maxsize=queue_size)
            self._thread = threading.Thread(
                target=self._run, name=f"trackmux-{self.name}", daemon=True
            )
            self._thread.start()

    # -- loop side -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def submit(self, method: str, *arguments) -> None:
        self.raise_if_failed()
        if self.disabled and not self._closes_anyway(method):
            return
        if self._queue is None:
            self._call(method, arguments, int(method in _RECORDS))
            self.raise_if_failed()
            return
        if method in _RECORDS:
            self.submitted += 1
        item = (method, arguments)
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._wait_for_room(item)
        depth = self._queue.qsize()
        if depth > self.max_pending:
            self.max_pending = depth

    def _wait_for_room(self, item) -> None:
        began = time.monotonic()
        self.stalls += 1
        if self.on_stall is not None:
            self.on_stall(self, True)
        try:
            self._queue.put(item, timeout=STALL_WARNING_AFTER)
        except queue.Full:
            logger.warning(
                "tracker %r is behind: its queue is full (%d records); training waits for it "
                "(nothing is dropped)",
                self.name,
                self._queue.maxsize,
            )
            while not self.disabled and self._thread.is_alive():
                try:
                    self._queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
        finally:
            self.stalled_seconds += time.monotonic() - began
            if self.on_stall is not None:
                self.on_stall(self, False)

    def figures(self) -> dict:
        """What this tracker cost the run: seconds in its calls, seconds the loop waited on
        its full queue, its largest queue depth, records submitted and delivered."""
        return {
            "busy_s": round(self.busy_seconds, 6),
            "waited_s": round(self.stalled_seconds, 6),
            "stalls": self.stalls,
            "max_queue": self.max_pending,
            "records": self.submitted,
            "delivered": self.delivered,
            "failures": self.failed_calls,
            "disabled": self.disabled,
            "abandoned": self.abandoned,
        }

    def prepare(self, run) -> bool:
        """Run the tracker's ``prepare`` on the loop thread; False (and disabled) if it failed."""
        self._call("prepare", (run,))
        self.raise_if_failed()
        return not self.disabled

    def request_flush(self) -> _Flush | None:
        """Ask the tracker to flush after what was submitted so far, without waiting."""
        if self.disabled:
            return None
        if self._queue is None:
            self._call("flush", ())
            self.raise_if_failed()
            return None
        marker = _Flush()
        self.submit("flush", marker)
        return marker

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far was delivered (at most ``timeout`` s)."""
        marker = self.request_flush()
        if marker is None:
            return True
        done = marker.done.wait(timeout)
        if not done:
            logger.warning(
                "tracker %r did not flush within %.0f s (%d records pending); training goes on",
                self.name,
                timeout,
                self.pending,
            )
        self.raise_if_failed()
        return done

    def close(self, timeout: float) -> None:
        """Stop the worker after what was submitted; abandon what is left after ``timeout``."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            logger.warning(
                "tracker %r did not finish within %.0f s: abandoning %d pending records "
                "(TrainingArguments.tracker_close_timeout)",
                self.name,
                timeout,
                self.pending,
            )
            self.abandoned = sum(1 for method, _ in _snapshot(self._queue) if method in _RECORDS)
            self.disabled = True
            self._abandoned = True

    def _closes_anyway(self, method: str) -> bool:
        # a tracker disabled after repeated failures still gets one try at closing its run,
        # so the backend does not show it "running" forever
        return method == "finish" and self.started and not self._abandoned

    def raise_if_failed(self) -> None:
        if self.strict and self.error is not None:
            error, self.error = self.error, None
            raise TrackerError(f"tracker {self.name!r} failed: {error!r}") from error

    # -- worker side ---------------------------------------------------------------------

    def _run(self) -> None:
        item = self._queue.get()
        while item is not _STOP:
            method, arguments = item
            if method == "log_metrics":
                records, item = self._gather(arguments)
                if not self.disabled:
                    self._call("log_metrics_batch", (records,), len(records))
                if item is None:
                    item = self._queue.get()
                continue
            if method == "flush":
                if not self.disabled:
                    self._call("flush", ())
                arguments[0].done.set()
            elif not self.disabled or self._closes_anyway(method):
                self._call(method, arguments, int(method in _RECORDS))
            item = self._queue.get()

    def _gather(self, first) -> tuple[list, object]:
        """``first`` and the metrics records right behind it: those already queued, and
        those arriving within the tracker's batch window (a backend call per record costs
        more than one per batch). Returns them with the item that ended the batch, if any."""
        records = [_as_record(first)]
        deadline = time.monotonic() + self.batch_window
        while len(records) < MAX_BATCH:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return records, None
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    return records, None
            if item is _STOP or item[0] != "log_metrics":
                return records, item
            records.append(_as_record(item[1]))
        return records, None

    def _call(self, method: str, arguments, records: int = 0) -> None:
        began = time.perf_counter()
        try:
            result = getattr(self.tracker, method)(*arguments)
        except Exception as error:
            # a batch is the tracker's log_metrics to its author and to the user
            name = "log_metrics" if method == "log_metrics_batch" else method
            self._failed(name, error, max(1, records))
            return
        finally:
            self.busy_seconds += time.perf_counter() - began
        self.delivered += records
        self.failures = 0
        if method == "start":
            self.started = True
            self.identity = result if isinstance(result, dict) else None

    def _failed(self, method: str, error: Exception, records: int = 1) -> None:
        # a failed batch counts each record it held, as if they had come one by one
        self.failures += records
        self.failed_calls += records
        if self.strict and self.error is None:
            self.error = error
        if not self.reported:
            self.reported = True
            logger.error(
                "tracker %r failed in %s(); training goes on without this record:\n%s",
                self.name,
                method,
                "".join(traceback.format_exception(error)).rstrip(),
            )
        else:
            logger.debug("tracker %r failed again in %s(): %r", self.name, method, error)
        if method in ("prepare", "start") or self.failures >= MAX_CONSECUTIVE_FAILURES:
            self.disabled = True
            logger.error(
                "tracker %r is disabled for the rest of this run (%s); the other trackers and "
                "training go on",
                self.name,
                "it could not start"
                if method in ("prepare", "start")
                else f"{self.failures} failures in a row",
            )


def _snapshot(pending: queue.Queue) -> list:
    with pending.mutex:
        return [item for item in pending.queue if item is not _STOP]


def _as_record(arguments: tuple) -> tuple:
    # defer("log_metrics", values, step) may leave the epoch out
    return arguments if len(arguments) == 3 else (*arguments, None)
