"""The delivery process: ``python -m trackmux.companion``, started by the training process
(:mod:`trackmux.delivery_process`) with its instructions as JSON on stdin.

It follows the run journal as it grows and feeds each out-of-process tracker through the
replay engine of ``trackmux sync`` (:class:`trackmux.replay.Replay`), one thread per tracker
so that a hung backend holds back only itself. What reached each backend is in the run's
state file; a replacement process (this one died) or a later ``trackmux sync`` goes on from
there. When the training process is gone and the journal has no finish record (``kill -9``,
an out-of-memory kill), it delivers what the journal holds and closes each backend run as
killed. It ignores Ctrl-C (the terminal's Ctrl-C is the training's to handle) and runs in its
own session; it imports neither torch nor a backend the trackers it feeds do not need.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import threading
import time

from .delivery_process import LOG_FILE, NOTICES_FILE, is_notice

logger = logging.getLogger("trackmux.companion")

#: seconds between two reads of a journal that did not grow
POLL = 0.1
#: seconds between two reads of the journal while its last session is closed
IDLE_POLL = 0.5
#: failed attempts in a row (no record confirmed in between) before a tracker is given up
ATTEMPTS = 4
#: seconds before the first retry of a tracker that failed; doubled at each failure
RETRY_AFTER = 1.0


def main() -> int:
    spec = json.loads(sys.stdin.readline())
    released = threading.Event()
    threading.Thread(target=_wait_for_release, args=(released,), daemon=True).start()
    if hasattr(signal, "SIGINT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the trackers' modules are found where the training process found them
    sys.path[:] = list(dict.fromkeys([*spec.get("sys_path", []), *sys.path]))
    logging.basicConfig(
        level=logging.INFO,
        # its own lines go to the run's delivery log even where the backends' output goes
        # to the console (TRACKMUX_BACKEND_OUTPUT)
        filename=os.path.join(spec["run_dir"], LOG_FILE),
        format=f"%(asctime)s delivery[{os.getpid()}] %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().addHandler(Notices(os.path.join(spec["run_dir"], NOTICES_FILE)))
    logger.info(
        "following %s for %s", spec["run_dir"], ", ".join(t["name"] for t in spec["trackers"])
    )
    follow(spec, released)
    return 0


def follow(spec: dict, released: threading.Event) -> None:
    """Feed every tracker of ``spec`` until the journal's last session is delivered and
    closed and the training process ``released`` it (no other session will come), or the
    training process is gone and everything it wrote was delivered."""
    from .replay import Journal
    from .sync import STATE_FORMAT, SyncError, _exclusive, _saver, read_state

    run_dir = spec["run_dir"]
    with _exclusive(run_dir, wait=True):  # a process it replaces may still be finishing
        try:
            state = read_state(run_dir)
        except SyncError as error:
            logger.error("%s; nothing is delivered", error)
            return
        first = next(iter(Journal(run_dir).read()), (0, {}))[1]
        fingerprint = {"run": first.get("run"), "time": first.get("time")}
        if state["trackers"] and state.get("log") not in (None, fingerprint):
            logger.error("%s was written for another run log; nothing is delivered", run_dir)
            return
        state["format"], state["log"] = STATE_FORMAT, fingerprint
        save = _saver(run_dir, state)
        parent = int(spec["parent"])
        threads = [
            threading.Thread(
                target=_feed,
                args=(spec, target, state, save, parent, released),
                name=f"trackmux-delivery-{target['name']}",
            )
            for target in spec["trackers"]
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class Notices(logging.Handler):
    """What a tracker or its backend says that a user must see (Comet's "logging offline,
    upload with ..."): appended to the run's notices file, which the training process shows
    on its console as if the tracker ran there (docs/architecture.md)."""

    def __init__(self, path: str):
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        if not is_notice(record.name, record.levelno):
            return
        try:
            line = json.dumps(
                {"logger": record.name, "level": record.levelno, "message": record.getMessage()}
            )
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except Exception:
            self.handleError(record)


def _wait_for_release(released: threading.Event) -> None:
    # the training process keeps our stdin open while this journal may get another session
    # (an evaluate() after train() continues the same backend runs, here); end of file: it
    # let go of us, or it is gone
    try:
        while sys.stdin.readline():
            pass
    finally:
        released.set()


def parent_alive(parent: int) -> bool:
    # orphaned, a process is handed to another parent at once, even while the training
    # process is still a zombie nobody reaped
    return os.getppid() == parent


def _feed(spec: dict, target: dict, state: dict, save, parent: int, released) -> None:
    from .replay import READ_LIMIT, Journal, Replay

    name = target["name"]
    failures = 0
    while True:
        entry = dict(state["trackers"].get(name) or {})
        if not entry.get("identity") and target.get("resume"):
            entry["identity"] = target["resume"]  # from the checkpoint resumed from
        replay = Replay(
            name,
            entry,
            lambda e: save(name, e),
            tracker=_tracker(target),
            output_dir=spec["output_dir"],
            close_timeout=float(spec.get("close_timeout", 60.0)),
            give_up_after=float(spec.get("give_up_after", 300.0)),
            follow=True,
        )
        journal = Journal(spec["run_dir"])
        before = replay.done
        try:
            while True:
                gone = not parent_alive(parent)  # before reading: then the read is the last
                records = journal.read(READ_LIMIT)
                if records:
                    replay.feed(records)
                if gone and records:
                    continue  # the journal is complete now: read the rest of it
                if gone:
                    replay.end()
                    logger.info(
                        "%s: training process gone; %d records delivered", name, replay.done
                    )
                    return
                if not records:
                    idle = replay.closed and replay.live is None
                    if idle and released.is_set():
                        return  # the last session is delivered and closed
                    time.sleep(IDLE_POLL if idle else POLL)
        except Exception as error:
            entry["error"] = f"{type(error).__name__}: {error}"
            logger.error("%s: delivery failed after %d records: %s", name, replay.done, error)
            replay.abort()
            failures = 0 if replay.done > before else failures + 1
            if failures >= ATTEMPTS:
                entry["gave_up"] = True
                save(name, entry)
                logger.error("%s: giving up after %d failed attempts", name, failures)
                return
            time.sleep(min(30.0, RETRY_AFTER * 2.0 ** (failures - 1)))


def _tracker(target: dict):
    module, _, qualname = target["class"].partition(":")
    tracker_class = importlib.import_module(module)
    for part in qualname.split("."):
        tracker_class = getattr(tracker_class, part)
    return tracker_class(**(target.get("settings") or {}))


if __name__ == "__main__":
    sys.exit(main())
