"""``TrackmuxCallback``: trackmux's trackers from Hugging Face's ``transformers.Trainer``.

Add it to a transformers Trainer whose own reporting is off (``report_to="none"``)::

    trainer = Trainer(
        model, TrainingArguments("out", report_to="none"), train_dataset=...,
        callbacks=[TrackmuxCallback(report_to=["jsonl", "mlflow"])],
    )

What it does, event by event (on the main process only, ``state.is_world_process_zero``):

- ``on_train_begin`` opens a run with :func:`trackmux.run.start_run`: named
  ``args.run_name`` (or generated), in ``args.output_dir``, with ``TrainingArguments.to_dict()``
  plus the model's config as its config. A training resumed from ``checkpoint-N`` continues the
  tracker runs recorded in that checkpoint (see ``on_save``).
- ``on_log`` reports every log at ``state.global_step`` under the names trackmux's own Trainer
  uses: ``loss`` -> ``train/loss``, ``eval_loss`` -> ``eval/loss``...; the final
  ``train_runtime``/``train_loss``/... log becomes the run's summary.
- ``on_save`` flushes the trackers (bounded by ``close_timeout``) and writes their run
  identities to ``checkpoint-N/trackmux-run.json``.
- ``on_train_end`` finishes the run with "success".
- ``evaluate()`` or ``predict()`` outside training open a run for that call (reopening this
  callback's last run, if any) and finish it when the call ends.

transformers has no exception event, so a training that raises is closed like this:

- ``with callback.guard(): trainer.train()`` finishes the run at once: "failed" on an
  exception, "killed" on Ctrl-C, SIGTERM (turned into KeyboardInterrupt while inside) or
  SystemExit; the exception propagates unchanged. This is the guaranteed way.
- without ``guard()``, a run still open when the interpreter exits is finished then, by an
  ``atexit`` handler: "killed" after an uncaught KeyboardInterrupt, "failed" otherwise. A
  process killed by a signal it does not handle (SIGKILL, a default SIGTERM) runs no handler:
  its run keeps no final status, though everything logged before is in the jsonl log.
- a new ``train()`` with the same callback first finishes a run left open by a previous call
  that raised, as "failed".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import threading

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as error:  # transformers is an optional extra
    raise ImportError(
        f"trackmux.integrations.transformers needs Hugging Face transformers ({error}); "
        "install it with: pip install 'trackmux[transformers]'"
    ) from error

from ..delivery import TrackerError
from ..run import start_run
from ..tracker import FAILED, KILLED, SUCCESS
from ..values import MetricFilter
from . import _exit

logger = logging.getLogger(__name__)

#: written into each checkpoint directory: the run name and every tracker's run identity
RUN_FILE = "trackmux-run.json"


class TrackmuxCallback(TrainerCallback):
    """Reports a transformers Trainer's logs, evaluations, saves and end through trackmux.

    The arguments are :func:`trackmux.run.start_run`'s: ``report_to`` picks the trackers
    ("all" installed ones by default, a name, a list, "none"), ``trackers`` adds Tracker
    instances, ``tracker_config`` holds settings per tracker name. ``run_name`` overrides
    ``TrainingArguments.run_name``; ``config`` is added to every run's config.
    """

    def __init__(
        self,
        report_to="all",
        *,
        config: dict | None = None,
        run_name: str | None = None,
        trackers=None,
        tracker_config: dict | None = None,
        strict: bool | None = None,
        queue_size: int = 10000,
        close_timeout: float = 30.0,
        run_journal: bool = True,
    ):
        self.report_to = report_to
        self.config = dict(config or {})
        self.run_name = run_name
        self.trackers = list(trackers or [])
        self.tracker_config = dict(tracker_config or {})
        self._run_options = {
            "strict": strict,
            "queue_size": queue_size,
            "close_timeout": close_timeout,
            "run_journal": run_journal,
        }
        #: the open :class:`trackmux.run.Run`, or None between runs
        self.run = None
        #: the last finished Run (its ``status``, ``identities``, ``where()``); evaluate()
        #: and predict() after training reopen it
        self.last_run = None
        self._kind: str | None = None
        self._filter = MetricFilter("TrackmuxCallback")
        self._warned_report_to = False

    # -- events ---------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if not state.is_world_process_zero:
            return
        self._warn_if_transformers_reports(args)
        if self.run is not None:
            # a previous train() or evaluate() with this callback raised and was caught
            self._finish(FAILED)
        saved = self._saved_run(args, state) if state.global_step > 0 else None
        if saved is not None:
            self._open(args, state, model, "train", saved["run_name"], saved["identities"])
        else:
            self._open(args, state, model, "train", self.run_name or _run_name(args), None)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = self._filter.numeric(logs)
        if not metrics:
            return
        if self.run is None:
            self._reopen(args, state, model, "evaluate")
        if "train_runtime" in logs:
            self.run.log_summary(metrics, step=state.global_step)
        else:
            self.run.log(metrics, step=state.global_step, epoch=logs.get("epoch"))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # the metrics came through on_log already (evaluate() logs them first)
        if state.is_world_process_zero and self.run is not None and self._kind != "train":
            self._finish(SUCCESS)

    def on_predict(self, args, state, control, metrics=None, model=None, **kwargs):
        # predict() does not log: its test_* metrics arrive only here
        if not state.is_world_process_zero:
            return
        numeric = self._filter.numeric(metrics or {})
        if numeric:
            if self.run is None:
                self._reopen(args, state, model, "predict")
            self.run.log(numeric, step=state.global_step, epoch=state.epoch)
        if self.run is not None and self._kind != "train":
            self._finish(SUCCESS)

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or self.run is None:
            return
        self.run.flush()
        directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(directory):  # a hyperparameter search saves under run-<trial>/
            return
        record = {
            "run_name": self.run.name,
            "step": state.global_step,
            "identities": self.run.identities,
        }
        path = os.path.join(directory, RUN_FILE)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            json.dump(record, handle, indent=2, default=str)
        os.replace(path + ".tmp", path)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.run is not None:
            self._finish(SUCCESS)

    # -- failure --------------------------------------------------------------------------

    @contextlib.contextmanager
    def guard(self):
        """``with callback.guard(): trainer.train()``: an exception finishes the open run as
        "failed" at once, Ctrl-C, SIGTERM or SystemExit as "killed"; it then propagates."""
        with _sigterm_as_keyboard_interrupt():
            try:
                yield self
            except (KeyboardInterrupt, SystemExit):
                self._finish(KILLED)
                raise
            except BaseException:
                self._finish(FAILED)
                raise

    # -- runs -----------------------------------------------------------------------------

    def _open(self, args, state, model, kind: str, name: str | None, resume: dict | None):
        self.run = start_run(
            self.report_to,
            config=self._config(args, model),
            output_dir=args.output_dir,
            run_name=name,
            trackers=self.trackers,
            tracker_config=self.tracker_config,
            resume=resume,
            step=state.global_step,
            kind=kind,
            **self._run_options,
        )
        self._kind = kind
        _exit.watch(self)

    def _reopen(self, args, state, model, kind: str) -> None:
        if self.last_run is not None:
            last = self.last_run
            self._open(args, state, model, kind, last.name, dict(last.identities))
        else:
            self._open(args, state, model, kind, self.run_name or _run_name(args), None)

    def _finish(self, status: str) -> None:
        run, self.run = self.run, None
        _exit.forget(self)
        if run is None:
            return
        try:
            run.finish(status)
        except TrackerError:
            if status == SUCCESS:
                raise
            # closing after a failure: never hide the error that ended the training
            logger.exception("TrackmuxCallback: a tracker also failed while closing the run")
        finally:
            self.last_run = run

    def _close_at_exit(self, error) -> None:
        # the training never reached on_train_end: it raised (``error``, when uncaught) or
        # was abandoned
        self._finish(KILLED if isinstance(error, KeyboardInterrupt) else FAILED)

    def _config(self, args, model) -> dict:
        config = args.to_dict()
        model_config = getattr(model, "config", None)
        to_dict = getattr(model_config, "to_dict", None)
        if callable(to_dict):
            config["model"] = to_dict()
        elif isinstance(model_config, dict):
            config["model"] = dict(model_config)
        if model is not None:
            config["model_class"] = type(model).__name__
        config.update(self.config)
        return config

    def _saved_run(self, args, state) -> dict | None:
        """The run recorded in the checkpoint this training resumed from (it is loaded into
        ``state`` before on_train_begin, so its step names the directory)."""
        directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        path = os.path.join(directory, RUN_FILE)
        try:
            with open(path, encoding="utf-8") as handle:
                saved = json.load(handle)
            return {"run_name": saved["run_name"], "identities": dict(saved["identities"])}
        except FileNotFoundError:
            logger.warning(
                "TrackmuxCallback: training resumes at step %d but %s does not exist, so the "
                "trackers start new runs (a checkpoint saved by a Trainer with this callback, "
                "in output_dir, has one)",
                state.global_step,
                path,
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "TrackmuxCallback: cannot read %s (%s): the trackers start new runs", path, error
            )
        return None

    def _warn_if_transformers_reports(self, args) -> None:
        reporting = [name for name in (args.report_to or []) if name != "none"]
        if reporting and not self._warned_report_to:
            self._warned_report_to = True
            logger.warning(
                "TrackmuxCallback: the transformers Trainer reports to %s itself as well "
                "(TrainingArguments.report_to=%r), so those trackers get every metric twice. "
                'Pass TrainingArguments(report_to="none") and choose the trackers with '
                "TrackmuxCallback(report_to=...).",
                ", ".join(reporting),
                args.report_to,
            )


def _run_name(args) -> str | None:
    """``args.run_name``, unless it is transformers 4's default (the output directory, a path
    rather than a name): None, and the run gets a generated name."""
    name = args.run_name
    if not name or name == args.output_dir:
        return None
    return name


@contextlib.contextmanager
def _sigterm_as_keyboard_interrupt():
    """SIGTERM (what schedulers send) raises KeyboardInterrupt while inside, as it does in
    trackmux's own Trainer, so the run closes as killed instead of dying with the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
