"""Asynchronous, isolated delivery of tracker calls: one bounded queue and one worker thread
per tracker, so the training loop never waits on a backend's network or disk, and a broken
backend never stops training (unless strict mode asks for exactly that).

Handing a record over costs the loop a deque append: the worker is woken only when it sleeps
without a batch window, or when a call is waited for (a flush, the end). A worker with a
batch window wakes by itself once per window and delivers what gathered in one batch.
"""

from __future__ import annotations

import collections
import logging
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
_STRICT_STOPS = "strict mode (tracker_strict / TRACKMUX_STRICT=1): training stops with TrackerError"
_RECORDS = ("log_metrics", "log_summary", "log_params", "log_artifact")


class TrackerError(RuntimeError):
    """A tracker failed while strict mode (``tracker_strict`` / ``TRACKMUX_STRICT=1``) is on."""


class JournalError(TrackerError):
    """The run journal (the ``jsonl`` tracker) could not be written and
    ``TrainingArguments.journal_errors="stop"`` asks training to stop on that. Raised from the
    tracker itself; the worker lets it through whatever the strict mode."""


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
        give_up_after: float = 300.0,
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
        #: set once ``start`` returned or failed: a checkpoint waits on it for the identity
        self.start_returned = threading.Event()
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
        self.queue_size = queue_size
        #: seconds the loop waits on a full queue that does not move before it abandons
        #: the tracker (TrainingArguments.tracker_stall_timeout): a slow backend only slows
        #: training, a dead one cannot hold it forever
        self.give_up_after = give_up_after
        self._taken = 0  # items the worker took off the queue: its progress
        self._stuck_at: int | None = None  # progress when a flush last timed out
        self._in_hand = 0  # records the worker took from the queue and is delivering
        self._items: collections.deque | None = None
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        if not tracker.synchronous:
            self._items = collections.deque()
            self._thread = threading.Thread(
                target=self._run, name=f"trackmux-{self.name}", daemon=True
            )
            self._thread.start()

    # -- loop side -----------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Records submitted and not delivered yet (queued, or in the worker's hands)."""
        if self._items is None:
            return 0
        return sum(1 for item in list(self._items) if item[0] in _RECORDS) + self._in_hand

    def submit(self, method: str, *arguments) -> None:
        self.raise_if_failed()
        if self.disabled and not self._closes_anyway(method):
            return
        record = method in _RECORDS
        if record:
            self.submitted += 1
        if self._items is None:
            self._call(method, arguments, int(record))
            self.raise_if_failed()
            return
        items = self._items
        if len(items) >= self.queue_size and not self._wait_for_room():
            return  # the tracker was disabled or died while the loop waited
        items.append((method, arguments))
        depth = len(items)
        if depth > self.max_pending:
            self.max_pending = depth
        if (method != "log_metrics" or not self.batch_window) and not self._wake.is_set():
            self._wake.set()

    def _wait_for_room(self) -> bool:
        began = time.monotonic()
        self.stalls += 1
        self._wake.set()  # a worker gathering a batch delivers it now
        if self.on_stall is not None:
            self.on_stall(self, True)
        warned = False
        progress, moved = self._taken, began
        try:
            while len(self._items) >= self.queue_size:
                if self.disabled or not self._thread.is_alive():
                    return False
                now = time.monotonic()
                if self._taken != progress:
                    progress, moved = self._taken, now
                elif now - moved >= self.give_up_after:
                    self._abandon(
                        f"made no progress for {self.give_up_after:g} s with a full queue",
                        "tracker_stall_timeout",
                    )
                    return False
                if not warned and now - began >= STALL_WARNING_AFTER:
                    warned = True
                    logger.warning(
                        "tracker %r is behind: its queue is full (%d records); training waits "
                        "for it (nothing is dropped) up to %g s without progress "
                        "(TrainingArguments.tracker_stall_timeout)",
                        self.name,
                        self.queue_size,
                        self.give_up_after,
                    )
                time.sleep(0.001)
            return True
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
            # a tracker's own figures (the run journal: records dropped, still unwritten)
            **(_own_figures(self.tracker)),
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
        if self._items is None:
            self._call("flush", ())
            self.raise_if_failed()
            return None
        marker = _Flush()
        self.submit("flush", marker)
        return marker

    @property
    def stuck(self) -> bool:
        """Whether a wait on this tracker timed out and it has not moved since: it is not
        waited for again, so one dead backend does not cost every save the whole timeout."""
        return self._stuck_at is not None and self._stuck_at == self._taken

    def wait_started(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the submitted ``start`` returned or failed."""
        if self.start_returned.is_set():
            return True
        if self.disabled or self.stuck:
            return False
        if self.start_returned.wait(timeout):
            return True
        self._stuck_at = self._taken
        return False

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far was delivered (at most ``timeout`` s).
        A tracker that is ``stuck`` is not waited for."""
        if self.stuck:
            return False
        return self.wait_flushed(self.request_flush(), timeout)

    def wait_flushed(self, marker: _Flush | None, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) for a flush that ``request_flush`` asked for."""
        if marker is None:
            return True
        done = marker.done.wait(timeout)
        if not done:
            self._stuck_at = self._taken
            logger.warning(
                "tracker %r did not flush within %g s (%d records pending); training goes on "
                "without waiting for it again until it moves",
                self.name,
                timeout,
                self.pending,
            )
        else:
            self._stuck_at = None
        self.raise_if_failed()
        return done

    def stop(self) -> None:
        """Ask the worker to stop once it delivered what was submitted (no waiting)."""
        if self._thread is not None:
            self._items.append((_STOP, ()))
            self._wake.set()

    def join(self, timeout: float, configured: float | None = None) -> None:
        """Wait at most ``timeout`` s for the stopped worker; abandon it if still busy."""
        if self._thread is None or self._abandoned:
            return  # an abandoned worker was already given up on (and said so)
        self._thread.join(timeout)
        if self._thread.is_alive():
            limit = configured if configured is not None else timeout
            self._abandon(f"did not finish within {limit:g} s")

    def _abandon(self, why: str, setting: str = "tracker_close_timeout") -> None:
        self.abandoned = self.pending
        logger.warning(
            "tracker %r %s: abandoning it with %d records it had not delivered "
            "(TrainingArguments.%s); training and the other trackers go on",
            self.name,
            why,
            self.abandoned,
            setting,
        )
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
        items, wake = self._items, self._wake
        while True:
            # with a batch window, sleep through it unless a waited-for call arrives
            wake.wait(self.batch_window or None)
            wake.clear()
            while items:
                method, arguments = items.popleft()
                self._taken += 1
                if method is _STOP:
                    return
                if method == "log_metrics":
                    self._deliver_metrics(arguments)
                elif method == "flush":
                    if not self.disabled:
                        self._call("flush", ())
                    arguments[0].done.set()
                elif not self.disabled or self._closes_anyway(method):
                    self._call(method, arguments, int(method in _RECORDS))

    def _deliver_metrics(self, first) -> None:
        """``first`` and the metrics records queued right behind it, in one call: one
        backend call per batch costs far less than one per record."""
        items = self._items
        records = [_as_record(first)]
        while items and len(records) < MAX_BATCH and items[0][0] == "log_metrics":
            records.append(_as_record(items.popleft()[1]))
            self._taken += 1
        if not self.disabled:
            self._call("log_metrics_batch", (records,), len(records))

    def _call(self, method: str, arguments, records: int = 0) -> None:
        began = time.perf_counter()
        self._in_hand = records
        try:
            if method == "start":  # the resume identity is checked first (trackmux.tracker)
                call = getattr(self.tracker, "_start_vetted", self.tracker.start)
            else:
                call = getattr(self.tracker, method)
            result = call(*arguments)
        except JournalError as error:
            self.failed_calls += max(1, records)
            self.disabled = True
            logger.error("%s", error)
            raise
        except Exception as error:
            self._failed(_shown(method), error, max(1, records))
            return
        except BaseException as error:
            # a backend calling sys.exit() in the worker must not kill the worker silently;
            # on the loop thread (a synchronous tracker) Ctrl-C stays Ctrl-C
            if threading.current_thread() is not self._thread:
                raise
            self._failed(_shown(method), error, max(1, records))
            return
        else:
            if method == "start":  # before the event below: a waiter reads the identity
                self.started = True
                self.identity = result if isinstance(result, dict) else None
        finally:
            self.busy_seconds += time.perf_counter() - began
            self._in_hand = 0
            if method == "start":
                self.start_returned.set()
        self.delivered += records
        self.failures = 0

    def _failed(self, method: str, error: BaseException, records: int = 1) -> None:
        # a failed batch counts each record it held, as if they had come one by one
        self.failures += records
        self.failed_calls += records
        if self.strict and self.error is None:
            self.error = error
        if not self.reported:
            self.reported = True
            logger.error(
                "tracker %r failed in %s(); %s:\n%s",
                self.name,
                method,
                _STRICT_STOPS if self.strict else "training goes on without this record",
                "".join(traceback.format_exception(error)).rstrip(),
            )
        else:
            logger.debug("tracker %r failed again in %s(): %r", self.name, method, error)
        if self.disabled:
            return  # said once already (a disabled tracker still gets its finish call)
        if method in ("prepare", "start") or self.failures >= MAX_CONSECUTIVE_FAILURES:
            self.disabled = True
            logger.error(
                "tracker %r is disabled for the rest of this run (%s); %s",
                self.name,
                "it could not start"
                if method in ("prepare", "start")
                else f"{self.failures} failures in a row",
                _STRICT_STOPS if self.strict else "the other trackers and training go on",
            )


def _own_figures(tracker: Tracker) -> dict:
    own = getattr(tracker, "delivery_figures", None)
    if own is None:
        return {}
    try:
        return dict(own())
    except Exception:  # a report never fails on a tracker's figures
        return {}


def _as_record(arguments: tuple) -> tuple:
    # defer("log_metrics", values, step) may leave the epoch out
    return arguments if len(arguments) == 3 else (*arguments, None)


def _shown(method: str) -> str:
    # a batch is the tracker's log_metrics to its author and to the user
    return "log_metrics" if method == "log_metrics_batch" else method
