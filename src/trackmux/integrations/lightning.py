"""``TrackmuxLogger``: trackmux's trackers as a Lightning logger.

    trainer = lightning.Trainer(logger=TrackmuxLogger("logs", report_to=["jsonl", "mlflow"]))

A real ``lightning.pytorch.loggers.Logger``; what Lightning calls, and what it becomes:

- ``experiment`` (Lightning touches it at setup) opens the run with
  :func:`trackmux.run.start_run` in ``save_dir``, and returns the :class:`trackmux.run.Run`;
  the trackers start with the first record, so hyperparameters logged before it are part of
  the config every tracker starts with.
- ``log_hyperparams(params)`` adds ``params`` (a dict or an argparse Namespace) to the run's
  config; after the first metrics, trackers that can update params receive them.
- ``log_metrics(metrics, step)`` logs the metrics under the names the LightningModule gave
  them, at ``step``; the ``epoch`` Lightning adds goes in the record's epoch field.
- ``after_save_checkpoint`` flushes the trackers (bounded), as trackmux does at every save.
- ``finalize(status)`` finishes the run: Lightning's "success" (and "finished", its status
  for a SLURM requeue) -> "success", "failed" -> "failed", or "killed" when the failure is
  a KeyboardInterrupt (Lightning reports Ctrl-C as "failed"). A ``validate()`` / ``test()``
  after ``fit()`` reopens the same run; a run reopened by using ``experiment`` outside of
  them, which Lightning never finalizes, is finished at interpreter exit ("success", or
  "failed"/"killed" after an uncaught exception/KeyboardInterrupt).

The version is the run name, and ``name`` is "runs", so ``log_dir`` is
``<save_dir>/runs/<run name>``: the jsonl run log's directory, where Lightning then puts its
checkpoints too. Everything happens on rank zero only; other ranks get a dummy experiment.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping

try:
    from lightning.pytorch.loggers import Logger
    from lightning.pytorch.loggers.logger import rank_zero_experiment
    from lightning.pytorch.utilities import rank_zero_only
except ImportError as error:  # lightning is an optional extra
    raise ImportError(
        f"trackmux.integrations.lightning needs Lightning ({error}); "
        "install it with: pip install 'trackmux[lightning]'"
    ) from error

from ..delivery import TrackerError
from ..run import generated_run_name, start_run
from ..tracker import FAILED, KILLED, SUCCESS
from . import _exit

logger = logging.getLogger(__name__)

#: Lightning's finalize statuses, in trackmux's terms
_STATUSES = {"success": SUCCESS, "finished": SUCCESS, "failed": FAILED}


class TrackmuxLogger(Logger):
    """Logs a Lightning Trainer's hyperparameters and metrics through trackmux's trackers.

    ``save_dir`` is the output directory of the run (the jsonl log goes to
    ``<save_dir>/runs/<run_name>/events.jsonl``); ``run_name`` defaults to a generated one.
    The other arguments are :func:`trackmux.run.start_run`'s: ``report_to`` picks the trackers
    ("all" installed ones by default, a name, a list, "none"), ``trackers`` adds Tracker
    instances, ``tracker_config`` holds settings per tracker name, ``config`` starts the
    run's config.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike = "lightning_logs",
        run_name: str | None = None,
        *,
        report_to="all",
        config: dict | None = None,
        trackers=None,
        tracker_config: dict | None = None,
        strict: bool | None = None,
        queue_size: int = 10000,
        close_timeout: float = 30.0,
        run_journal: bool = True,
    ):
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        # chosen now: Lightning asks for log_dir (its checkpoint folder) before any record
        self._run_name = run_name or generated_run_name()
        self._options = {
            "report_to": report_to,
            "trackers": list(trackers or []),
            "tracker_config": dict(tracker_config or {}),
            "strict": strict,
            "queue_size": queue_size,
            "close_timeout": close_timeout,
            "run_journal": run_journal,
        }
        self._config = dict(config or {})
        self._run = None
        #: the last finalized Run (its ``status``, ``identities``, ``where()``);
        #: validate()/test() after fit() reopen it
        self.last_run = None
        self._last_step = 0

    # -- where ----------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "runs"

    @property
    def version(self) -> str:
        return self._run_name

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self.save_dir, self.name)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root_dir, self.version)

    # -- the run --------------------------------------------------------------------------

    @property
    @rank_zero_experiment
    def experiment(self):
        """The open :class:`trackmux.run.Run` (opened, or reopened after finalize, here)."""
        if self._run is None:
            reopening = self.last_run is not None
            self._run = start_run(
                self._options["report_to"],
                config=self._config,
                output_dir=self.save_dir,
                run_name=self._run_name,
                trackers=self._options["trackers"],
                tracker_config=self._options["tracker_config"],
                resume=dict(self.last_run.identities) if reopening else None,
                step=self._last_step,
                # "evaluate": the jsonl reader keeps every point of a reopened run
                kind="evaluate" if reopening else "train",
                strict=self._options["strict"],
                queue_size=self._options["queue_size"],
                close_timeout=self._options["close_timeout"],
                run_journal=self._options["run_journal"],
            )
            _exit.watch(self)
        return self._run

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        params = _as_dict(params)
        self._config.update(params)
        self.experiment.log_params(params)

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        metrics = dict(metrics)
        epoch = metrics.pop("epoch", None)
        if step is not None:
            self._last_step = step
        self.experiment.log(metrics, step=step, epoch=epoch)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        if self._run is not None:
            self._run.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        ours = _STATUSES.get(status, FAILED)
        # Lightning finalizes with "failed" from inside its except block: Ctrl-C is in flight
        if ours == FAILED and isinstance(sys.exc_info()[1], KeyboardInterrupt):
            ours = KILLED
        self._finish(ours)

    def _close_at_exit(self, error) -> None:
        # Lightning finalizes every fit/validate/test itself, failures included: a run still
        # open at exit was reopened by using ``experiment`` (or logging) after one ended
        if isinstance(error, KeyboardInterrupt):
            self._finish(KILLED)
        else:
            self._finish(FAILED if error is not None else SUCCESS)

    def _finish(self, ours: str) -> None:
        run, self._run = self._run, None
        _exit.forget(self)
        if run is None:
            return
        try:
            run.finish(ours)
        except TrackerError:
            if ours == SUCCESS:
                raise
            logger.exception("TrackmuxLogger: a tracker also failed while closing the run")
        finally:
            self.last_run = run


def _as_dict(params) -> dict:
    if isinstance(params, argparse.Namespace):
        return vars(params).copy()
    if isinstance(params, Mapping):
        return dict(params)
    raise TypeError(
        f"TrackmuxLogger.log_hyperparams({params!r}): pass a dict or an argparse.Namespace"
    )
