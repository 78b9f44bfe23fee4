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

from ._logging import ensure_default_handler
from .delivery import TrackerError, TrackerWorker
from .hookspecs import PROJECT_NAME, hookimpl
from .run import Run, choose_trackers, generated_run_name, safe_where
from .tracker import FAILED, KILLED, SUCCESS, RunInfo, Tracker
from .trainer_state import TRACKMUX_STATE_FILE_NAME, add_tracker_runs
from .trainer_utils import get_last_checkpoint
from .values import MetricFilter

logger = logging.getLogger(__name__)

FINAL_MODEL_DIR = "final-model"
#: seconds an interrupted session waits for trackers in the training process to close: the
#: checkpoint is written, the journal closed; train() hands control back now
INTERRUPT_CLOSE_SECONDS = 1.5


class TrackerHub:
    def __init__(self, trainer, trackers: list[Tracker], summary: str = ""):
        self.trainer = trainer
        self.trackers = trackers
        self.summary = summary
        self.run: Run | None = None
        self.filter = MetricFilter()
        self._identities: dict[str, dict] = {}
        self._depth = 0
        self._final_model: str | None = None
        self._policies: dict[str, str] = {}
        #: state files saved this session while trackers were still starting: their names
        self._unsettled: dict[str, list[str]] = {}
        #: the delivery process of the open session (None: every tracker is in this process)
        self.delivery = None
        #: set by the Trainer when a signal stops training: nothing waits on a tracker then
        self.interrupted = False
        self._last_delivery = None

    @classmethod
    def for_trainer(cls, trainer) -> TrackerHub:
        """Resolve the trainer's ``report_to`` (raising ReportToError for a name that cannot
        run) and build its trackers; on other ranks only trackers that opted in."""
        ensure_default_handler()
        main = trainer.distributed.is_world_zero
        trackers, summary = choose_trackers(
            trainer.args.report_to,
            trainer.tracker_config,
            list(trainer._explicit_trackers),
            main=main,
            journal=trainer.args.run_journal,
        )
        if main:
            logger.info(summary)
        return cls(trainer, trackers, summary)

    @property
    def workers(self) -> list[TrackerWorker]:
        """The workers of the open run (empty between sessions)."""
        return self.run.workers if self.run is not None else []

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
            if outermost and self.run is not None:
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
            state.run_name = args.run_name or generated_run_name()
        # a bad artifact setting fails here, before the first step, not at the first save
        self._policies = {tracker.name: self._resolve_policy(tracker) for tracker in self.trackers}
        self.interrupted = False
        remote = self._out_of_process()
        self.run = Run(
            [tracker for tracker in self.trackers if tracker.name not in remote],
            name=state.run_name,
            config=self._config(),
            output_dir=args.output_dir,
            kind=kind,
            step=state.global_step,
            resume={t.name: self._resume_identity(t.name, kind) for t in self.trackers},
            args=args,
            queue_size=args.tracker_queue_size,
            strict=args.strict_trackers,
            close_timeout=args.tracker_close_timeout,
            stall_timeout=args.tracker_stall_timeout,
            on_stall=self._show_stall,
        ).open()
        if remote:
            for name, spec in remote.items():
                # the state file's identity comes first; this one is for a journal without it
                spec["resume"] = self._resume_identity(name, kind)
            self._start_delivery(remote)

    def _out_of_process(self) -> dict[str, dict]:
        """The trackers the delivery process feeds from the journal: {name: what it needs}.
        None when the journal is off, in thread mode, or on a rank that does not report."""
        from .delivery_process import delivery_mode, target

        args = self.trainer.args
        if (
            delivery_mode(args.tracker_delivery) != "process"
            or not self.trainer.distributed.is_world_zero
        ):
            return {}
        journal = next((t for t in self.trackers if t.name == "jsonl"), None)
        if journal is None:
            return {}
        explicit = [id(tracker) for tracker in self.trainer._explicit_trackers]
        chosen = {}
        for tracker in self.trackers:
            # a tracker with an artifact policy of its own gets its artifacts in this process
            policy = self._policies.get(tracker.name)
            if tracker.stores_artifacts() and policy != self._policies.get("jsonl"):
                continue
            spec = target(tracker, explicit=id(tracker) in explicit)
            if spec is not None and not self._prepare_keeps(tracker):
                chosen[tracker.name] = spec
        return chosen

    def _prepare_keeps(self, tracker: Tracker) -> bool:
        """Run the tracker's ``prepare`` here, where the caller's state is (a run the user
        opened, the Trainer's arguments): if it kept anything of it, the tracker needs this
        process and stays (it is prepared again when its run opens, as ``prepare`` allows)."""
        if type(tracker).prepare is Tracker.prepare:
            return False
        args, state = self.trainer.args, self.trainer.state
        before = dict(vars(tracker))
        info = RunInfo(
            name=state.run_name,
            config={},
            output_dir=args.output_dir,
            step=state.global_step,
            args=args,
        )
        try:
            tracker.prepare(info)
        except Exception:
            return True  # its worker here reports the error, as for any tracker
        return any(
            value is not before.get(key) and value not in (None, False, "", 0)
            for key, value in vars(tracker).items()
        )

    def _start_delivery(self, remote: dict[str, dict]) -> None:
        from .delivery_process import follow_journal

        args = self.trainer.args
        journal = next((w for w in self.run.workers if w.tracker.name == "jsonl"), None)
        directory = getattr(journal.tracker, "directory", None) if journal else None
        trackers = [tracker for tracker in self.trackers if tracker.name in remote]
        if directory is None or journal.disabled:
            logger.warning(
                "the run journal could not be opened: %s run in the training process",
                ", ".join(repr(t.name) for t in trackers),
            )
            self.run.adopt(trackers)
            return
        self._last_delivery = None
        self.delivery, new = follow_journal(
            directory,
            list(remote.values()),
            output_dir=args.output_dir,
            # the delivery process is patient: nobody waits on it, and a close it gave up on
            # would leave the backend run open
            close_timeout=max(args.tracker_close_timeout, args.tracker_stall_timeout),
            give_up_after=args.tracker_stall_timeout,
            backend_output=any(tracker.backend_output() for tracker in trackers),
        )
        if not new:
            return
        logger.info(
            "delivery process %d feeds %s from the run journal",
            self.delivery.pid,
            ", ".join(repr(t.name) for t in trackers),
        )

    def _resume_identity(self, name: str, kind: str) -> dict | None:
        """A training continues a run only when resumed from a checkpoint (the state holds
        the identity); evaluate/predict reopen this Trainer's last run."""
        state = self.trainer.state
        saved = state.tracker_runs.get(name)
        if kind == "train":
            if saved is None and name in state.tracker_runs_pending:
                logger.warning(
                    "tracker %r: opening a new run; the checkpoint resumed from holds no run "
                    "identity for it (its start had not returned when the checkpoint was saved)",
                    name,
                )
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
        run, self.run = self.run, None
        delivery, self.delivery = self.delivery, None
        if self.interrupted:
            run.close_timeout = min(run.close_timeout, INTERRUPT_CLOSE_SECONDS)
        try:
            run.finish(status)  # waits for the trackers, those still starting included
            if delivery is not None and not self.interrupted:
                # the journal holds the finish record: the delivery process closes the runs
                delivery.wait(self.trainer.args.tracker_close_timeout)
        finally:
            self._remember_identities(run, delivery)
            self._unsettled.clear()  # what did not start by now never will in this run
        if delivery is not None:
            self._last_delivery = delivery
            self._report_delivery_errors(delivery)

    def _report_delivery_errors(self, delivery) -> None:
        for name, entry in delivery.state().items():
            if entry.get("gave_up") and self.trainer.args.strict_trackers:
                raise TrackerError(
                    f"tracker {name!r} failed in the delivery process and was given up: "
                    f"{entry.get('error')} (strict mode)"
                )
            if entry.get("error"):
                logger.warning(
                    "tracker %r (delivery process): %s; see %s",
                    name,
                    entry["error"],
                    delivery.run_dir,
                )

    def _remember_identities(self, run: Run, delivery=None) -> None:
        identities = dict(run.identities)
        if delivery is not None:
            identities.update(delivery.identities())
        state = self.trainer.state
        self._identities.update(identities)
        state.tracker_runs.update(identities)
        state.tracker_runs_pending = [
            name for name in state.tracker_runs_pending if name not in identities
        ]
        self._complete_checkpoints(identities)

    def _starting(self) -> tuple[list[str], list[str]]:
        """Trackers whose run has no identity yet: (in this process, in the delivery
        process). For the latter a checkpoint needs none: resuming it appends to the same
        journal, whose state file holds their identities when their runs start."""
        remote = []
        if self.delivery is not None:
            known = self.delivery.identities()
            remote = [name for name in self.delivery.names if name not in known]
        return self.run.starting(), remote

    def before_checkpoint(self, directory: str) -> None:
        """Wait for the trackers, within ``tracker_close_timeout`` in all (a start that has
        not returned first, then a flush), and record their run identities in the state
        about to be saved in ``directory``, so resuming it continues the same runs. A
        tracker still starting then is named in a warning and in ``tracker_runs_pending``;
        its identity is added to that checkpoint if it starts before this run closes."""
        state, args = self.trainer.state, self.trainer.args
        state.tracker_runs_pending = []
        if self.run is None:
            return
        # an interrupt checkpoint waits on no tracker: it comes first (docs/reliability.md)
        self.run.flush(0.0 if self.interrupted else args.tracker_close_timeout)
        self._remember_identities(self.run, self.delivery)
        starting, remote = self._starting()
        if not (starting or remote) or not args.should_save:
            return
        # added to the checkpoint once known, for a resume in thread mode
        self._unsettled[os.path.join(directory, TRACKMUX_STATE_FILE_NAME)] = starting + remote
        # one that resumed a run keeps that run's identity meanwhile
        state.tracker_runs_pending = [name for name in starting if name not in state.tracker_runs]
        for name in state.tracker_runs_pending:
            logger.warning(
                "tracker %r had not started when %s was saved (a save waits for a start up "
                "to %g s, TrainingArguments.tracker_close_timeout): it holds no run identity "
                "for it, so resuming it would open a new %r run. The identity is added to the "
                "checkpoint if the tracker starts before this run closes; on a slow or loaded "
                "machine, raise tracker_close_timeout.",
                name,
                directory,
                args.tracker_close_timeout,
                name,
            )

    def _complete_checkpoints(self, identities: dict[str, dict]) -> None:
        """Add the identities of trackers that started after a checkpoint of this session
        was saved to that checkpoint, so resuming it continues their runs."""
        for path, names in list(self._unsettled.items()):
            found = {name: identities[name] for name in names if name in identities}
            if not found:
                continue
            left = [name for name in names if name not in found]
            if left:
                self._unsettled[path] = left
            else:
                del self._unsettled[path]
            try:
                changed = add_tracker_runs(path, found)
            except FileNotFoundError:
                continue  # rotated away (save_total_limit)
            except (OSError, ValueError) as error:
                names = ", ".join(repr(name) for name in found)
                logger.warning("could not add the run identity of %s to %s: %s", names, path, error)
                continue
            if changed:
                logger.info(
                    "%s: added the run identity of %s, which started after it was saved",
                    path,
                    ", ".join(repr(name) for name in found),
                )

    def _show_stall(self, worker: TrackerWorker, waiting: bool) -> None:
        """Back-pressure made visible: the progress bar names the tracker the loop waits on."""
        for callback in self.trainer.callback_handler.callbacks:
            show = getattr(callback, "show_tracker_wait", None)
            if show is not None:
                show(worker.name if waiting else None, worker.pending)

    def where(self) -> list[tuple[str, str | None]]:
        """(tracker name, where its data is) for each tracker of the last session."""
        delivery = self.delivery or self._last_delivery
        remote = delivery.where() if delivery is not None else {}
        return [
            (tracker.name, remote.get(tracker.name) or safe_where(tracker))
            for tracker in self.trackers
        ]

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
                self.run.deliver(worker, "log_artifact", path, kind, state.global_step)

    # -- events (pluggy implementations) ----------------------------------------------------

    @hookimpl
    def on_log(self, state, logs):
        if self.run is None:
            return
        if self.delivery is not None:
            self.delivery.check()
        metrics = self.filter.numeric(logs)
        if not metrics:
            return
        if "train_runtime" in logs:
            self.run.log_summary(metrics, state.global_step)
        else:
            self.run.log_metrics(metrics, state.global_step, logs.get("epoch"))

    @hookimpl
    def on_predict(self, state, metrics):
        if self.run is None:
            return
        numeric = self.filter.numeric(metrics)
        if numeric:
            self.run.log_metrics(numeric, state.global_step, state.epoch)

    @hookimpl
    def on_save(self, args, state):
        directory = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        for worker in self.workers:
            if self._policy(worker.tracker) == "checkpoint":
                self.run.deliver(worker, "log_artifact", directory, "checkpoint", state.global_step)


def has_direct_hooks(tracker: Tracker) -> bool:
    """Whether the tracker implements hooks itself (they run in the training process)."""
    marker = f"{PROJECT_NAME}_impl"
    return any(
        callable(function := getattr(type(tracker), attribute, None))
        and getattr(function, marker, None) is not None
        for attribute in dir(type(tracker))
    )


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
