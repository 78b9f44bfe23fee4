"""One tracker run, and ``trackmux.start_run`` for loops that are not a trackmux Trainer.

A :class:`Run` owns the trackers of one run and one :class:`~trackmux.delivery.TrackerWorker`
each: it opens them with a name and a config, fans every record out to them under the names
each backend accepts, and closes them with a status. The Trainer's hub opens one per session;
``start_run`` hands one to a plain loop (or to the Hugging Face and Lightning adapters), so
every caller gets the same asynchronous delivery, error isolation and redaction.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

from ._logging import ensure_default_handler
from .delivery import TrackerError, TrackerWorker
from .tracker import FAILED, KILLED, STATUSES, SUCCESS, RunInfo, Tracker
from .values import MetricFilter, flatten, redact, redact_identity, redact_text

logger = logging.getLogger(__name__)


def choose_trackers(
    report_to,
    tracker_config: dict | None = None,
    explicit: list | tuple = (),
    *,
    main: bool = True,
    owner: str = "TrainingArguments",
    journal: bool = True,
) -> tuple[list[Tracker], str]:
    """Resolve ``report_to`` (raising ReportToError for a name that cannot run) into tracker
    objects built with their ``tracker_config`` settings, plus ``explicit`` Tracker instances;
    on a process other than the main one only trackers that opted in (``all_ranks``).
    The run journal (``jsonl``) is among them unless ``journal`` is False.
    Returns the trackers, the local run log first, and the one-line summary of the choice."""
    from .plugins import get_registry
    from .report_to import resolve

    for tracker in explicit:
        if not isinstance(tracker, Tracker):
            raise TypeError(f"trackers=[...]: {tracker!r} is not a trackmux.Tracker instance")
    explicit_names = {tracker.name for tracker in explicit}
    selection = resolve(report_to, get_registry(), explicit_names, journal=journal)
    config = dict(tracker_config or {})
    trackers = []
    for info in selection.chosen:
        settings = config.pop(info.name, None) or {}
        if main or info.tracker_class.all_ranks:
            trackers.append(info.tracker_class(**settings))
    for name in config:
        if name in explicit_names:
            logger.warning(
                "tracker_config[%r] is ignored: the %r tracker passed in trackers=[...] "
                "takes its settings from its constructor",
                name,
                name,
            )
        else:
            logger.warning(
                "tracker_config has settings for %r, which is not among the chosen trackers "
                "(%s.report_to=%r)",
                name,
                owner,
                report_to,
            )
    trackers += [tracker for tracker in explicit if main or tracker.all_ranks]
    # the local run log goes first: it is written before any other tracker sees a record
    trackers.sort(key=lambda tracker: tracker.name != "jsonl")
    return trackers, selection.summary(explicit)


def generated_run_name() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class Run:
    """The trackers of one run. Records go to every tracker through its own worker; a
    tracker that fails is reported once and left behind, training never waits on one
    (except on a full queue: back-pressure, nothing dropped)."""

    def __init__(
        self,
        trackers: list[Tracker],
        *,
        name: str,
        config: dict | None = None,
        output_dir: str = ".",
        kind: str = "train",
        step: int = 0,
        resume: dict[str, dict] | None = None,
        args: Any = None,
        queue_size: int = 10000,
        strict: bool = False,
        close_timeout: float = 30.0,
        stall_timeout: float = 300.0,
        on_stall=None,
    ):
        self.trackers = list(trackers)
        self.name = name
        self.config = dict(config or {})
        self.output_dir = output_dir
        self.kind = kind
        self.step = step
        self.resume = dict(resume or {})
        self.args = args
        self.queue_size = queue_size
        self.strict = strict
        self.close_timeout = close_timeout
        self.stall_timeout = stall_timeout
        self.on_stall = on_stall
        self.status: str | None = None
        self.identities: dict[str, dict] = {}
        self.workers: list[TrackerWorker] = []
        self.filter = _AsGiven()
        self._started = False
        # per tracker: name logged -> backend name, and backend name -> name logged
        self._metric_names: dict[str, dict[str, str]] = {}
        self._metric_owners: dict[str, dict[str, str]] = {}

    # -- opening -----------------------------------------------------------------------

    def open(self, *, start: bool = True) -> Run:
        """Create the workers and run each tracker's ``prepare`` on this thread; queue the
        ``start`` calls now, or (``start=False``) on the first record, so params given
        before it are part of the config every tracker starts with."""
        ensure_default_handler()
        for tracker in self.trackers:
            self._add_worker(tracker)
        if start:
            self._start()
        return self

    def _add_worker(self, tracker: Tracker) -> TrackerWorker:
        worker = TrackerWorker(
            tracker,
            queue_size=self.queue_size,
            strict=self.strict,
            on_stall=self.on_stall,
            give_up_after=self.stall_timeout,
        )
        self.workers.append(worker)
        tracker._worker = worker
        tracker.run_info = self._run_info(tracker)
        worker.prepare(tracker.run_info)
        return worker

    def adopt(self, trackers: list[Tracker]) -> None:
        """Add trackers to the open run (the delivery process could not take them)."""
        for tracker in trackers:
            self.trackers.append(tracker)
            worker = self._add_worker(tracker)
            if self._started and not worker.disabled:
                worker.submit("start", tracker.run_info)

    def _run_info(self, tracker: Tracker) -> RunInfo:
        return RunInfo(
            name=self.name,
            config=_prepare_config(tracker, self.config),
            output_dir=self.output_dir,
            resume=self.resume.get(tracker.name),
            kind=self.kind,
            step=self.step,
            args=self.args,
        )

    def _start(self) -> None:
        if self._started:
            return
        self._started = True
        for worker in self.workers:
            if worker.disabled:
                continue
            worker.submit("start", worker.tracker.run_info)

    # -- records -----------------------------------------------------------------------

    def log(self, metrics: dict, step: int | None = None, epoch: float | None = None) -> None:
        """Record the numbers in ``metrics`` (names kept as given) at ``step``; without a
        step, the one after the last logged (the first is ``step`` given at opening)."""
        if step is None:
            step = self.step
        elif not isinstance(step, int) or isinstance(step, bool):
            raise TypeError(f"Run.log(step={step!r}): step must be an int")
        self.step = step + 1
        numeric = self.filter.numeric(metrics)
        if numeric:
            self.log_metrics(numeric, step, epoch)

    def log_metrics(self, metrics: dict, step: int, epoch: float | None = None) -> None:
        """Deliver numbers already checked by the caller (the Trainer's hub)."""
        self._start()
        for worker in self.workers:
            worker.submit("log_metrics", self._names_for(worker.tracker, metrics), step, epoch)

    def log_summary(self, metrics: dict, step: int | None = None) -> None:
        """End-of-run values (a runtime, a final score)."""
        numeric = self.filter.numeric(metrics)
        if not numeric:
            return
        self._start()
        step = self.step if step is None else step
        for worker in self.workers:
            worker.submit("log_summary", self._names_for(worker.tracker, numeric), step)

    def log_params(self, params: dict) -> None:
        """Add to the run's config: before the first record, every tracker starts with it;
        after, each tracker that can update its params receives them."""
        if not isinstance(params, dict):
            raise TypeError(f"Run.log_params({params!r}): params must be a dict")
        self.config.update(params)
        if not self._started:
            for tracker in self.trackers:
                if tracker.run_info is not None:
                    tracker.run_info.config = _prepare_config(tracker, self.config)
            return
        for worker in self.workers:
            worker.submit("log_params", _prepare_config(worker.tracker, params))

    def log_artifact(self, path: str, kind: str = "model", step: int | None = None) -> None:
        """Store the file or directory ``path`` in every tracker that stores artifacts."""
        self._start()
        step = self.step if step is None else step
        for worker in self.workers:
            if worker.tracker.stores_artifacts():
                worker.submit("log_artifact", path, kind, step)

    def deliver(self, worker: TrackerWorker, method: str, *arguments) -> None:
        """One call for one tracker only (the Trainer's artifact policy picks trackers)."""
        self._start()
        worker.submit(method, *arguments)

    def _names_for(self, tracker: Tracker, metrics: dict) -> dict:
        """The metrics under the names the tracker's backend accepts (cached per name): no
        two names of a run share a backend name (see :func:`_assign_names`)."""
        if (
            type(tracker).sanitize_name is Tracker.sanitize_name
            and not tracker.max_name_length
            and not tracker.max_name_part_bytes
        ):
            return metrics
        names = self._metric_names.get(tracker.name)
        if names is None:
            names = self._metric_names[tracker.name] = {}
            self._metric_owners[tracker.name] = {}
        renamed = {}
        for name, value in metrics.items():
            clean = names.get(name)
            if clean is None:
                _assign_names(tracker, metrics, names, self._metric_owners[tracker.name])
                clean = names[name]
            renamed[clean] = value
        return renamed

    def metric_names(self, tracker_name: str) -> dict[str, str]:
        """The names given so far to ``tracker_name``'s backend: {name logged: name stored}
        (only names that trackmux had to map; a name stored as logged is absent)."""
        names = self._metric_names.get(tracker_name, {})
        return {name: clean for name, clean in names.items() if clean != name}

    # -- flushing and closing ------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Wait (at most ``timeout`` s in all, default the close timeout) until every
        tracker has started and made durable what it received; the identities of the
        started ones are known afterwards, the others are in ``starting()``."""
        self._start()  # a flush is a point where the run exists (its identity is known)
        timeout = self.close_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout

        def left() -> float:
            return max(0.0, deadline - time.monotonic())

        # every tracker flushes on its own thread at once, while this waits: a slow one
        # does not leave the others no time
        markers = [(worker, worker.request_flush()) for worker in self.workers if not worker.stuck]
        # the starts first: an identity is what a checkpoint cannot do without
        for worker in self.workers:
            worker.wait_started(left())
        for worker, marker in markers:
            if worker.start_returned.is_set():  # a flush queued behind a start cannot end
                worker.wait_flushed(marker, left())
        self._remember_identities()

    def starting(self) -> list[str]:
        """The trackers whose ``start`` was submitted and has not returned yet."""
        return [
            worker.tracker.name
            for worker in self.workers
            if self._started and not worker.disabled and not worker.start_returned.is_set()
        ]

    def finish(self, status: str = SUCCESS) -> None:
        """Close every tracker's run with ``status`` (success, failed, killed), waiting at
        most the close timeout in all; a tracker still busy then is abandoned, with a
        warning saying how many records it held."""
        if status not in STATUSES:
            raise ValueError(f"Run.finish(status={status!r}): status must be one of {STATUSES}")
        if self.status is not None:
            return
        self.status = status
        if not self.workers:
            return
        self._start()
        self._remember_identities()
        deadline = time.monotonic() + self.close_timeout
        # the local run log closes last, so it records how every other tracker did
        local = [w for w in self.workers if w.tracker.synchronous]
        queued = [w for w in self.workers if not w.tracker.synchronous]
        for worker in queued:
            worker.request_flush()
            worker.submit("finish", status)
            worker.stop()
        # one shared deadline: a hung tracker must not use up the healthy ones' time
        for worker in queued:
            worker.join(max(0.0, deadline - time.monotonic()), configured=self.close_timeout)
        report = self.delivery_report()
        for worker in local:
            worker.submit("log_delivery", report)
            worker.submit("finish", status)
        self._remember_identities()
        _log_delivery_line(report)
        for worker in self.workers:
            worker.raise_if_failed()

    def delivery_report(self) -> dict[str, dict]:
        """Per tracker: seconds spent in its calls, the loop's waits on it, its largest
        queue depth, records delivered and what it failed or abandoned."""
        return {worker.name: worker.figures() for worker in self.workers}

    def _remember_identities(self) -> None:
        for worker in self.workers:
            if worker.identity is not None:
                # what checkpoints and sync-state.json keep: never a credential (a URI's
                # userinfo, a token); a tracker reconnects with its configured URI
                self.identities[worker.tracker.name] = redact_identity(worker.identity)

    def where(self) -> list[tuple[str, str | None]]:
        """(tracker name, where its data is) for each tracker."""
        return [(tracker.name, safe_where(tracker)) for tracker in self.trackers]

    # -- context manager ---------------------------------------------------------------

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.finish(SUCCESS)
            return
        status = KILLED if issubclass(kind, KeyboardInterrupt | SystemExit) else FAILED
        try:
            self.finish(status)
        except TrackerError:  # never hide the error that ended the run
            logger.exception("a tracker also failed while closing")

    def __repr__(self) -> str:
        names = ", ".join(tracker.name for tracker in self.trackers)
        return f"<trackmux.Run {self.name!r} [{names}] {self.status or 'open'}>"


def start_run(
    report_to="all",
    *,
    config: dict | None = None,
    output_dir: str = "trackmux_runs",
    run_name: str | None = None,
    trackers: list[Tracker] | None = None,
    tracker_config: dict | None = None,
    resume: dict[str, dict] | None = None,
    step: int = 0,
    kind: str = "train",
    strict: bool | None = None,
    queue_size: int = 10000,
    close_timeout: float = 30.0,
    stall_timeout: float = 300.0,
    run_journal: bool = True,
) -> Run:
    """Open a run in the trackers ``report_to`` chooses, for any training loop.

    The run journal (``<output_dir>/runs/<run>/events.jsonl``, the ``jsonl`` tracker) is kept
    whatever ``report_to`` says, ``"none"`` included, so ``trackmux show``/``plot``/``sync``
    work on every run; ``run_journal=False`` turns it off.

    Use it as a context manager: the run finishes with "success", "failed" (an exception,
    re-raised unchanged) or "killed" (Ctrl-C, SystemExit). ``resume`` takes a previous run's
    ``identities`` to continue those runs. ``strict`` (default: ``TRACKMUX_STRICT``) raises
    the first tracker error instead of going on without the tracker.
    """
    import os

    from .training_args import STRICT_ENV_VAR, TRUTHY_ENV_VALUES

    if not isinstance(queue_size, int) or isinstance(queue_size, bool) or queue_size < 1:
        raise ValueError(f"start_run(queue_size={queue_size!r}): must be an int >= 1")
    if not isinstance(close_timeout, int | float) or close_timeout <= 0:
        raise ValueError(f"start_run(close_timeout={close_timeout!r}): must be a number > 0")
    if not isinstance(stall_timeout, int | float) or stall_timeout <= 0:
        raise ValueError(f"start_run(stall_timeout={stall_timeout!r}): must be a number > 0")
    if resume is not None and not isinstance(resume, dict):
        raise TypeError(
            f"start_run(resume={resume!r}): pass the identities of a previous run "
            "(run.identities, a dict of tracker name to identity)"
        )
    if not isinstance(run_journal, bool):
        raise TypeError(f"start_run(run_journal={run_journal!r}): must be True or False")
    chosen, summary = choose_trackers(
        report_to, tracker_config, list(trackers or []), owner="start_run", journal=run_journal
    )
    logger.info(summary)
    run = Run(
        chosen,
        name=run_name or generated_run_name(),
        config=config,
        output_dir=str(output_dir),
        kind=kind,
        step=step,
        resume=resume,
        queue_size=queue_size,
        strict=(
            os.environ.get(STRICT_ENV_VAR, "").strip().lower() in TRUTHY_ENV_VALUES
            if strict is None
            else bool(strict)
        ),
        close_timeout=float(close_timeout),
        stall_timeout=float(stall_timeout),
    )
    return run.open(start=False)


class _AsGiven(MetricFilter):
    """Numbers only, names as the caller gave them (a plain loop chooses its own)."""

    def namespaced(self, key: str) -> str:
        return key


def _prepare_config(tracker: Tracker, config: dict) -> dict:
    """Flatten with the tracker's separator, redact secrets, apply its limits."""
    flat = redact(flatten(config, tracker.param_separator))
    limit = tracker.max_param_value_length
    prepared, cut = {}, []
    for key, value in flat.items():
        name = _limited_name(tracker, key)
        if limit is not None and value is not None and len(str(value)) > limit:
            value = str(value)[:limit]
            cut.append(name)
        prepared[name] = value
    if cut:
        logger.warning(
            "%s: %d param value(s) longer than %d characters were cut: %s",
            tracker.name,
            len(cut),
            limit,
            ", ".join(cut),
        )
    return prepared


def _limited_name(tracker: Tracker, name: str) -> str:
    """``name`` sanitised for the tracker; over its limits (characters in all, UTF-8 bytes
    per "/" part), cut and given ``_`` + 8 hex digits of a hash of ``name`` itself, so the
    same long name is shortened the same way in every run and two long names stay apart."""
    clean = tracker.sanitize_name(name)
    if _fits(tracker, clean):
        return clean
    return _with_suffix(tracker, clean, _suffix(name))


def _assign_names(tracker: Tracker, metrics: dict, names: dict, owners: dict) -> None:
    """Give a backend name to each name of ``metrics`` not named yet.

    The rule (docs/trackers.md, "Metric names"): a name keeps its sanitised, limited form
    unless another name of the run already holds it; then it is stored as that form plus
    ``_`` and 8 hex digits of a hash of the name itself (stable across runs and resumes),
    with one warning naming both. Within one record, names the backend accepts unchanged
    are placed first, so ``acc/top1`` keeps its name against ``acc//top1`` whatever the
    order of the dict."""
    new = [name for name in metrics if name not in names]
    limited = {name: _limited_name(tracker, name) for name in new}
    new.sort(key=lambda name: limited[name] != name)  # stable: otherwise as logged
    for name in new:
        clean = limited[name]
        owner = owners.get(clean)
        if owner is None:
            chosen = clean
            if clean != name and not _fits(tracker, tracker.sanitize_name(name)):
                logger.warning(
                    "%s: metric name %r is too long for this backend; stored as %r",
                    tracker.name,
                    name,
                    chosen,
                )
        else:
            base = tracker.sanitize_name(name)
            seed, attempt = name, 0
            chosen = _with_suffix(tracker, base, _suffix(seed))
            while chosen in owners:  # a hash collision, or a user name that looks like one
                attempt += 1
                seed = f"{name}#{attempt}"
                chosen = _with_suffix(tracker, base, _suffix(seed))
            logger.warning(
                "%s: metric names %r and %r both map to %r in this backend; %r keeps it, "
                "%r is stored as %r",
                tracker.name,
                owner,
                name,
                clean,
                owner,
                name,
                chosen,
            )
        owners[chosen] = name
        names[name] = chosen


def _suffix(seed: str) -> str:
    import hashlib

    data = seed.encode("utf-8", "surrogatepass")
    return "_" + hashlib.blake2s(data, digest_size=4).hexdigest()


def _part_bytes(part: str) -> int:
    return len(part.encode("utf-8", "surrogatepass"))


def _fits(tracker: Tracker, clean: str) -> bool:
    limit = tracker.max_name_length
    if limit is not None and len(clean) > limit:
        return False
    most = tracker.max_name_part_bytes
    return most is None or all(_part_bytes(part) <= most for part in clean.split("/"))


def _cut_bytes(part: str, most: int) -> str:
    if _part_bytes(part) <= most:
        return part
    return part.encode("utf-8", "surrogatepass")[: max(most, 0)].decode("utf-8", "ignore")


def _with_suffix(tracker: Tracker, clean: str, suffix: str) -> str:
    """``clean`` + ``suffix``, cut so the result fits the tracker's limits."""
    limit = tracker.max_name_length
    if limit is not None:
        if limit <= len(suffix):  # no room for a suffix: a plain cut
            return clean[:limit]
        clean = clean[: limit - len(suffix)]
    most = tracker.max_name_part_bytes
    if most is not None:
        parts = clean.split("/")
        parts[:-1] = [_cut_bytes(part, most) for part in parts[:-1]]
        parts[-1] = _cut_bytes(parts[-1], most - len(suffix))
        clean = "/".join(parts)
    return clean + suffix


def safe_where(tracker: Tracker) -> str | None:
    try:
        where = tracker.where()
    except Exception as error:
        where = f"unknown ({error})"
    return redact_text(where) if isinstance(where, str) else where


def _log_delivery_line(report: dict[str, dict]) -> None:
    parts = []
    for name, figures in report.items():
        text = f"{name} {figures['busy_s']:.2f} s"
        details = []
        if figures["max_queue"]:
            details.append(f"queue max {figures['max_queue']}")
        if figures["waited_s"]:
            details.append(f"loop waited {figures['waited_s']:.2f} s")
        if figures["failures"]:
            details.append(f"{figures['failures']} failed")
        if figures["abandoned"]:
            details.append(f"abandoned {figures['abandoned']}")
        if figures.get("dropped"):
            details.append(f"dropped {figures['dropped']}")
        if figures.get("unwritten"):
            details.append(f"{figures['unwritten']} unwritten")
        if details:
            text += f" ({', '.join(details)})"
        parts.append(text)
    if parts:
        lost = any(
            figures.get("dropped") or figures.get("unwritten") for figures in report.values()
        )
        logger.log(logging.WARNING if lost else logging.INFO, "tracker time: %s", "; ".join(parts))
