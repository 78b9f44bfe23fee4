"""The TrackerHub: one pluggy plugin that feeds every tracker of a Trainer.

It resolves ``report_to`` into tracker objects, opens one run per Trainer session (train,
or a standalone evaluate/predict; an evaluate() after train() reopens the same run), turns
trainer events into the few calls of the :class:`~trackmux.Tracker` API, and closes every
run with the status that matches how the session ended. Trackers receive events through
this one fan-out rather than one pluggy implementation each: it is cheaper per event.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import time

from ._logging import ensure_default_handler
from .delivery import TrackerError, TrackerWorker
from .hookspecs import PROJECT_NAME, hookimpl
from .plugins import get_registry
from .report_to import resolve
from .tracker import FAILED, KILLED, SUCCESS, RunInfo, Tracker
from .trainer_utils import get_last_checkpoint
from .values import MetricFilter, flatten, redact

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final-model"


class TrackerHub:
    def __init__(self, trainer, trackers: list[Tracker], summary: str = ""):
        self.trainer = trainer
        self.trackers = trackers
        self.summary = summary
        self.workers: list[TrackerWorker] = []
        self.filter = MetricFilter()
        self._identities: dict[str, dict] = {}
        self._depth = 0
        self._final_model: str | None = None
        self._policies: dict[str, str] = {}
        self._metric_names: dict[str, dict[str, str]] = {}

    @classmethod
    def for_trainer(cls, trainer) -> TrackerHub:
        """Resolve the trainer's ``report_to`` (raising ReportToError for a name that cannot
        run) and build its trackers; on other ranks only trackers that opted in."""
        ensure_default_handler()
        args = trainer.args
        explicit = list(trainer._explicit_trackers)
        for tracker in explicit:
            if not isinstance(tracker, Tracker):
                raise TypeError(
                    f"Trainer(trackers=...): {tracker!r} is not a trackmux.Tracker instance"
                )
        selection = resolve(args.report_to, get_registry(), {t.name for t in explicit})
        config = dict(trainer.tracker_config)
        main = trainer.distributed.is_world_zero
        trackers = []
        for info in selection.chosen:
            settings = config.pop(info.name, None) or {}
            if main or info.tracker_class.all_ranks:
                trackers.append(info.tracker_class(**settings))
        explicit_names = {t.name for t in explicit}
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
                    "tracker_config has settings for %r, which is not among the chosen "
                    "trackers (report_to=%r)",
                    name,
                    args.report_to,
                )
        trackers += [t for t in explicit if main or t.all_ranks]
        # the local run log goes first: it is written before any other tracker sees a record
        trackers.sort(key=lambda tracker: tracker.name != "jsonl")
        summary = selection.summary(explicit)
        if main:
            logger.info(summary)
        return cls(trainer, trackers, summary)

    def register(self, trainer) -> None:
        if not self.trackers:
            return
        trainer.register_plugin(self, name=f"{PROJECT_NAME}.trackers")
        for tracker in self.trackers:
            hooks = _direct_hooks(tracker, self)
            if hooks is not None:
                trainer.register_plugin(hooks, name=f"{PROJECT_NAME}.tracker.{tracker.name}")

    # -- sessions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, kind: str):
        """One tracker run per outermost session: opened on entry, closed on exit with
        success, failed (an exception) or killed (Ctrl-C, SIGTERM)."""
        outermost = self._depth == 0
        if outermost and self.trackers:
            self._open(kind)
        self._depth += 1
        status = SUCCESS
        try:
            yield self
        except (KeyboardInterrupt, SystemExit):
            status = KILLED
            raise
        except BaseException:
            status = FAILED
            raise
        finally:
            self._depth -= 1
            if outermost and self.workers:
                if status == SUCCESS:
                    self._close(kind, status)
                else:
                    try:
                        self._close(kind, status)
                    except TrackerError:  # never hide the error that ended the session
                        logger.exception("a tracker also failed while closing")

    def _open(self, kind: str) -> None:
        trainer = self.trainer
        args, state = trainer.args, trainer.state
        if not state.run_name:
            state.run_name = args.run_name or _generated_run_name()
        config = self._config()
        # a bad artifact setting fails here, before the first step, not at the first save
        self._policies = {tracker.name: self._resolve_policy(tracker) for tracker in self.trackers}
        self.workers = []
        for tracker in self.trackers:
            worker = TrackerWorker(
                tracker, queue_size=args.tracker_queue_size, strict=args.strict_trackers
            )
            self.workers.append(worker)
            run = RunInfo(
                name=state.run_name,
                config=_prepare_config(tracker, config),
                output_dir=args.output_dir,
                resume=self._resume_identity(tracker.name, kind),
                kind=kind,
                step=state.global_step,
                args=args,
            )
            tracker.run_info = run
            tracker._worker = worker
            if worker.prepare(run):
                worker.submit("start", run)

    def _resume_identity(self, name: str, kind: str) -> dict | None:
        """A training continues a run only when resumed from a checkpoint (the state holds
        the identity); evaluate/predict reopen this Trainer's last run."""
        saved = self.trainer.state.tracker_runs.get(name)
        if kind == "train":
            return saved
        return self._identities.get(name) or saved

    def _config(self) -> dict:
        trainer = self.trainer
        config = trainer.args.to_dict()
        model_config = getattr(trainer.model, "config", None)
        to_dict = getattr(model_config, "to_dict", None)
        if callable(to_dict):
            config["model"] = to_dict()
        elif isinstance(model_config, dict):
            config["model"] = dict(model_config)
        config["model_class"] = type(trainer.model).__name__
        config.update(trainer.hyperparameters)
        return config

    def _close(self, kind: str, status: str) -> None:
        if kind == "train" and status == SUCCESS:
            self._final_artifacts()
        self._remember_identities()
        for worker in self.workers:
            worker.request_flush()
            worker.submit("finish", status)
        deadline = time.monotonic() + self.trainer.args.tracker_close_timeout
        for worker in self.workers:
            worker.close(max(0.0, deadline - time.monotonic()))
        self._remember_identities()
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.raise_if_failed()

    def _remember_identities(self) -> None:
        for worker in self.workers:
            if worker.identity is not None:
                self._identities[worker.tracker.name] = worker.identity
                self.trainer.state.tracker_runs[worker.tracker.name] = worker.identity

    def before_checkpoint(self) -> None:
        """Flush every tracker (bounded) and record run identities in the state that is
        about to be saved, so resuming this checkpoint continues the same runs."""
        timeout = self.trainer.args.tracker_close_timeout
        for worker in self.workers:
            worker.flush(timeout)
        self._remember_identities()

    def where(self) -> list[tuple[str, str | None]]:
        """(tracker name, where its data is) for each tracker of the last session."""
        return [(tracker.name, _safe_where(tracker)) for tracker in self.trackers]

    # -- artifacts -------------------------------------------------------------------------

    def _resolve_policy(self, tracker: Tracker) -> str:
        if not tracker.stores_artifacts():
            return "none"
        return tracker.artifact_policy(self.trainer.args.tracker_artifacts)

    def _policy(self, tracker: Tracker) -> str:
        return self._policies.get(tracker.name, "none")

    def _final_artifacts(self) -> None:
        state, args = self.trainer.state, self.trainer.args
        for worker in self.workers:
            policy = self._policy(worker.tracker)
            path, kind = None, "checkpoint"
            if policy == "end":
                if self._final_model is None:
                    directory = os.path.join(args.output_dir, FINAL_MODEL_DIR)
                    self._final_model = self.trainer.save_model(directory)
                path, kind = self._final_model, "model"
            elif policy == "best":
                path = state.best_model_checkpoint or get_last_checkpoint(args.output_dir)
            elif policy == "last":
                path = get_last_checkpoint(args.output_dir)
            if path:
                worker.submit("log_artifact", path, kind, state.global_step)

    # -- events (pluggy implementations) ----------------------------------------------------

    @hookimpl
    def on_log(self, state, logs):
        if not self.workers:
            return
        metrics = self.filter.numeric(logs)
        if not metrics:
            return
        step, epoch = state.global_step, logs.get("epoch")
        if "train_runtime" in logs:
            for worker in self.workers:
                worker.submit("log_summary", self._names_for(worker.tracker, metrics), step)
            return
        for worker in self.workers:
            worker.submit("log_metrics", self._names_for(worker.tracker, metrics), step, epoch)

    @hookimpl
    def on_predict(self, state, metrics):
        if not self.workers:
            return
        numeric = self.filter.numeric(metrics)
        for worker in self.workers:
            named = self._names_for(worker.tracker, numeric)
            worker.submit("log_metrics", named, state.global_step, state.epoch)

    def _names_for(self, tracker: Tracker, metrics: dict) -> dict:
        """The metrics under the names the tracker's backend accepts (cached per name)."""
        if type(tracker).sanitize_name is Tracker.sanitize_name and not tracker.max_name_length:
            return metrics
        names = self._metric_names.setdefault(tracker.name, {})
        renamed = {}
        for name, value in metrics.items():
            clean = names.get(name)
            if clean is None:
                clean = names[name] = _limited_name(tracker, name)
            renamed[clean] = value
        return renamed

    @hookimpl
    def on_save(self, args, state):
        directory = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        for worker in self.workers:
            if self._policy(worker.tracker) == "checkpoint":
                worker.submit("log_artifact", directory, "checkpoint", state.global_step)


def _generated_run_name() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


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
    clean = tracker.sanitize_name(name)
    limit = tracker.max_name_length
    if limit is not None and len(clean) > limit:
        clean = clean[:limit]
    return clean


def _safe_where(tracker: Tracker) -> str | None:
    try:
        return tracker.where()
    except Exception as error:
        return f"unknown ({error})"


def _direct_hooks(tracker: Tracker, hub: TrackerHub):
    """A plugin exposing the tracker's own ``@hookimpl`` methods, each error-isolated like
    the tracker's other calls; None when the tracker implements no hook directly."""
    marker = f"{PROJECT_NAME}_impl"
    methods = {}
    for attribute in dir(type(tracker)):
        function = getattr(type(tracker), attribute, None)
        if callable(function) and getattr(function, marker, None) is not None:
            methods[attribute] = _guarded(getattr(tracker, attribute), tracker, hub)
    if not methods:
        return None
    return type(f"{type(tracker).__name__}Hooks", (), methods)()


def _guarded(method, tracker: Tracker, hub: TrackerHub):
    @functools.wraps(method)
    def call(*arguments):
        worker = next((w for w in hub.workers if w.tracker is tracker), None)
        if worker is None or worker.disabled:
            return None
        try:
            return method(*arguments)
        except Exception as error:
            worker._failed(method.__name__, error)
            worker.raise_if_failed()
            return None

    return staticmethod(call)
