"""The training process's side of out-of-process delivery (docs/architecture.md).

When the run journal is on, the trackers that can run out of process are not given records
by the training process at all: the journal is their queue. :class:`DeliveryProcess` starts
the delivery process (:mod:`trackmux.companion`, a fresh interpreter, never a fork), starts a
new one when it died (checked at most once a second, at log time), reads the run
directory's state file for the trackers' identities and progress, and at the end of a session
waits a bounded time for delivery before leaving it to carry on in the background.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import subprocess
import sys
import time

from .tracker import Tracker

logger = logging.getLogger(__name__)

DELIVERY_ENV_VAR = "TRACKMUX_DELIVERY"
DELIVERY_MODES = ("process", "thread")
#: where the delivery process writes its log lines, in the run directory
LOG_FILE = "delivery.log"
#: what trackers and backends in the delivery process say for the user (JSON lines)
NOTICES_FILE = "delivery-notices.jsonl"
#: seconds between two looks at whether the delivery process is alive
CHECK_EVERY = 1.0
#: seconds between two progress lines while train() waits for delivery
SHOW_EVERY = 2.0

# processes left delivering in the background: kept referenced so that collecting their
# Popen object does not warn that they still run
_BACKGROUND: list[subprocess.Popen] = []


@atexit.register
def _leave_running() -> None:
    # a delivery process outlives the training process on purpose (it finishes delivering,
    # then exits): tell Popen not to warn at shutdown that it still runs
    for process in _BACKGROUND:
        _let_go(process)
        if process.poll() is None:
            process.returncode = 0


def _let_go(process: subprocess.Popen | None) -> None:
    """Close the delivery process's stdin: no other session will come, so it exits once
    its last one is delivered and closed."""
    if process is not None and process.stdin is not None and not process.stdin.closed:
        try:
            process.stdin.close()
        except OSError:
            pass  # it is gone already


def is_notice(logger_name: str, level: int) -> bool:
    """Whether a log record of the delivery process is one the user would have seen on the
    console had the tracker run in the training process: a tracker's own lines (a logger
    ``trackmux.<tracker>``) and a backend library's warnings. trackmux's core lines stay in
    ``delivery.log``; the errors among them reach the user through the state file."""
    package, _, rest = logger_name.partition(".")
    if package != "trackmux":
        return level >= logging.WARNING
    return bool(rest) and rest.split(".")[0] not in _core_modules()


@functools.cache
def _core_modules() -> frozenset[str]:
    import pkgutil

    import trackmux

    return frozenset(module.name for module in pkgutil.iter_modules(trackmux.__path__))


#: the delivery process following each run directory's journal, started by this process
_FOLLOWING: dict[str, DeliveryProcess] = {}


def follow_journal(run_dir: str, targets: list[dict], **options) -> tuple[DeliveryProcess, bool]:
    """The delivery process for a session of ``run_dir``'s journal, and whether it is new.
    The one that delivered the journal's last session goes on when it feeds the same
    trackers: an evaluate() after train(), or a resumed training in the same process,
    continues the backend runs it holds open. Any other one is let go; it exits once its
    last session is delivered and closed, and a new one continues from the state file."""
    wanted = DeliveryProcess(run_dir, targets, **options)
    current = _FOLLOWING.pop(wanted.run_dir, None)
    for process in _FOLLOWING.values():
        process.release()  # a journal no session of this process writes to any more
    _FOLLOWING.clear()
    if current is not None and current.serves(wanted):
        _FOLLOWING[wanted.run_dir] = current
        return current, False
    if current is not None:
        current.release()
    _FOLLOWING[wanted.run_dir] = wanted.start()
    return wanted, True


def delivery_mode(field: str | None) -> str:
    """``TrainingArguments.tracker_delivery`` when set, else ``TRACKMUX_DELIVERY``, else
    "process" (docs/architecture.md)."""
    value = field or os.environ.get(DELIVERY_ENV_VAR, "").strip().lower() or "process"
    if value not in DELIVERY_MODES:
        raise ValueError(
            f"environment variable {DELIVERY_ENV_VAR}={value!r} is not a delivery mode; "
            f"choose one of {', '.join(DELIVERY_MODES)}"
        )
    return value


def target(tracker: Tracker, *, explicit: bool) -> dict | None:
    """What the delivery process needs to build ``tracker`` (its class and settings), or
    None when it runs in the training process (docs/plugins/writing.md)."""
    cls = type(tracker)
    wanted = cls.out_of_process
    if tracker.synchronous or wanted is False or (explicit and wanted is not True):
        return None
    if tracker.needs_training_process() or cls.__module__ == "__main__":
        return None
    if "<locals>" in cls.__qualname__:
        return None
    try:
        settings = json.loads(json.dumps(tracker.settings))
    except (TypeError, ValueError):
        return None  # settings that are objects (a client, a callback) stay where they are
    return {
        "name": tracker.name,
        "class": f"{cls.__module__}:{cls.__qualname__}",
        "settings": settings,
    }


class DeliveryProcess:
    """The delivery process of one run directory and the trackers it feeds."""

    def __init__(
        self,
        run_dir: str,
        targets: list[dict],
        *,
        output_dir: str,
        close_timeout: float,
        give_up_after: float,
        backend_output: bool = False,
    ):
        # absolute: the training process may change its working directory meanwhile
        run_dir = os.path.abspath(run_dir)
        self.run_dir = run_dir
        self.backend_output = backend_output
        self.names = [t["name"] for t in targets]
        self.spec = {
            "run_dir": run_dir,
            "parent": os.getpid(),
            "trackers": targets,
            "output_dir": os.path.abspath(output_dir),
            "close_timeout": close_timeout,
            "give_up_after": give_up_after,
            "sys_path": [path for path in sys.path if path],
        }
        self.process: subprocess.Popen | None = None
        self._notices = os.path.join(run_dir, NOTICES_FILE)
        self._shown = _size(self._notices)  # what an earlier session's process said is said
        self.restarts = 0
        self._checked = 0.0

    def start(self) -> DeliveryProcess:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [package_root, *filter(None, [environment.get("PYTHONPATH")])]
        )
        with open(os.path.join(self.run_dir, LOG_FILE), "ab") as log:
            # the backends' own output, asked for (TRACKMUX_BACKEND_OUTPUT), is the console's
            output = None if self.backend_output else log
            self.process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                [sys.executable, "-m", "trackmux.companion"],
                stdin=subprocess.PIPE,
                stdout=output,
                stderr=output,
                env=environment,
                close_fds=True,
                # Ctrl-C in the terminal goes to the foreground process group: not to it
                start_new_session=os.name == "posix",
            )
        # one line; stdin stays open while this process may give the journal another session
        self.process.stdin.write(json.dumps(self.spec).encode("utf-8") + b"\n")
        self.process.stdin.flush()
        _BACKGROUND[:] = [p for p in _BACKGROUND if p.poll() is None]
        _BACKGROUND.append(self.process)
        return self

    def serves(self, wanted: DeliveryProcess) -> bool:
        """Whether this process, still running, does the work of ``wanted`` (not started):
        the same journal, trackers and settings. The next session of the journal (an
        evaluate() after train()) is then its."""
        return (
            self.process is not None
            and self.process.poll() is None
            and not self.process.stdin.closed
            and self._work() == wanted._work()
        )

    def _work(self) -> dict:
        spec = {k: v for k, v in self.spec.items() if k not in ("parent", "sys_path")}
        spec["trackers"] = [
            {k: v for k, v in target.items() if k != "resume"} for target in spec["trackers"]
        ]
        return {**spec, "backend_output": self.backend_output}

    def release(self) -> None:
        """No other session will come (it is also let go when this process exits)."""
        _let_go(self.process)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def check(self) -> None:
        """Start a new delivery process if this one died (cheap: looks at most once a
        second); the new one goes on from the state file."""
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY:
            return
        self._checked = now
        self.show_notices()
        if self.process is None or self.process.poll() is None:
            return
        entries = self.state()
        if entries and all(entry.get("gave_up") for entry in entries.values()):
            return  # it gave every tracker up: `trackmux sync` retries them later
        self.restarts += 1
        logger.warning(
            "the delivery process (pid %d) ended with exit code %s while the run goes on; "
            "starting a new one, which continues from %s",
            self.process.pid,
            self.process.returncode,
            os.path.join(self.run_dir, "sync-state.json"),
        )
        self.release()
        self.start()

    def show_notices(self) -> None:
        """Log, under their own logger names, the notices the delivery process wrote since
        the last look (a backend's text is data: it is the argument, never the format)."""
        if _size(self._notices) <= self._shown:
            return
        with open(self._notices, "rb") as handle:
            handle.seek(self._shown)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._shown += end
        for line in data[:end].splitlines():
            try:
                notice = json.loads(line)
                name, level, message = notice["logger"], int(notice["level"]), notice["message"]
            except (ValueError, KeyError, TypeError):
                continue
            logging.getLogger(str(name)).log(level, "%s", message)

    def state(self) -> dict[str, dict]:
        """Per tracker of this process: its entry of the state file (empty before any)."""
        from .sync import SyncError, read_state

        try:
            trackers = read_state(self.run_dir)["trackers"]
        except (OSError, SyncError):
            return {}
        return {name: trackers.get(name) or {} for name in self.names}

    def identities(self) -> dict[str, dict]:
        return {name: e["identity"] for name, e in self.state().items() if e.get("identity")}

    def wait(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for every tracker to have every record of the journal
        and its run closed, saying every few seconds how far delivery is; True when done."""
        try:
            return self._wait(timeout)
        finally:
            self.show_notices()

    def _wait(self, timeout: float) -> bool:
        total = journal_records(self.run_dir)
        deadline = time.monotonic() + timeout
        shown = time.monotonic()
        while True:
            if self.process.poll() is not None:
                if self.process.returncode == 0 and self._all_closed(total):
                    return True
                self._checked = 0.0
                self.check()  # it died before delivering everything: a new one goes on
            elif self._all_closed(total):
                return True
            now = time.monotonic()
            if now >= deadline:
                break
            if now - shown >= SHOW_EVERY:
                shown = now
                logger.info("waiting for delivery: %s", self.progress(total))
            time.sleep(0.05)
        logger.warning(
            "delivery goes on in the background (process %d): %s; `trackmux show %s` says "
            "where it stands",
            self.process.pid,
            self.progress(total),
            self.run_dir,
        )
        return False

    def _all_closed(self, total: int) -> bool:
        from .sync import delivered

        return all(delivered(e, total) or e.get("gave_up") for e in self.state().values())

    def progress(self, total: int) -> str:
        return "; ".join(describe(name, entry, total) for name, entry in self.state().items())

    def where(self) -> dict[str, str]:
        return {name: e["where"] for name, e in self.state().items() if e.get("where")}


def describe(name: str, entry: dict, total: int) -> str:
    """One tracker's delivery, in a few words: ``mlflow 120/145 records, open``."""
    from .sync import delivered

    done = int(entry.get("records") or 0)
    if entry.get("gave_up"):
        how = f"given up: {entry.get('error')}"
    elif delivered(entry, total):
        how = f"closed {entry.get('status')}"
    else:
        how = "delivering" + (f" (last error: {entry['error']})" if entry.get("error") else "")
    return f"{name} {done}/{total} records, {how}"


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def journal_records(run_dir: str) -> int:
    """Records in the journal now (complete lines that are JSON objects)."""
    from .replay import Journal

    return Journal(run_dir).count_all()
