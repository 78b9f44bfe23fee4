"""The ClearML tracker: one ClearML task per trackmux run, offline when no server is configured.

Which task:

- the user's own (``Task.current_task()``: their ``Task.init``, a pipeline step): logged
  into, never closed, its status left to them; so is the task of a parent process that
  clearml makes this one report into;
- on resume, and for ``evaluate()``/``predict()`` after ``train()``, the task the run identity
  names, reopened with ``Task.init(reuse_last_task_id=<id>, continue_last_task=0)``;
- otherwise a new task (never a reused one) in project ``CLEARML_PROJECT`` named
  ``CLEARML_TASK`` or the run name.

Offline or online: a task the plugin opens goes online when a server is configured
(``CLEARML_API_HOST`` / ``CLEARML_API_ACCESS_KEY``, or credentials in ``clearml.conf``), offline
otherwise (``Task.set_offline(True)``, said in one log line with the command that uploads it).
A reopened task stays where it lives: an offline session can only be continued offline.

What, when:

- start: the flattened config connected once as the hyperparameter section ``trackmux``;
- every log: ``eval/loss`` becomes ``report_scalar(title="eval", series="loss",
  iteration=<global step>)``, and the epoch ``train/epoch`` once per step;
- end of training: the summary values (``train/train_runtime``...) as single values under
  their full names;
- checkpoints or the final model, as the artifact policy asks: ``upload_artifact`` (a zip);
- finish: a console line ``trackmux: <kind> ended: <status>``; a task the plugin opened is
  closed (``close()`` marks it completed), then marked failed or stopped when that is how
  training ended.
"""

from __future__ import annotations

import logging
import os
import re

from trackmux.tracker import FAILED, KILLED, RunInfo, Tracker

logger = logging.getLogger(__name__)

PROJECT_ENV = "CLEARML_PROJECT"
TASK_ENV = "CLEARML_TASK"
LOG_MODEL_ENV = "CLEARML_LOG_MODEL"
OFFLINE_ENV = "CLEARML_OFFLINE_MODE"
DEFAULT_PROJECT = "trackmux"
SECTION = "trackmux"
IMPORT_COMMAND = "clearml-task --import-offline-session"

#: what points clearml at a server, as clearml reads them (its TRAINS_* names are the old ones)
_SERVER_ENVS = (
    "CLEARML_API_HOST",
    "CLEARML_API_ACCESS_KEY",
    "TRAINS_API_HOST",
    "TRAINS_API_ACCESS_KEY",
)
_CONFIG_FILE_ENVS = ("CLEARML_CONFIG_FILE", "TRAINS_CONFIG_FILE")
_CONFIG_FILES = ("~/clearml.conf", "~/trains.conf")
# a non-empty ``access_key`` (``clearml-init`` writes ``"access_key" = "..."``)
_ACCESS_KEY = re.compile(r"""access_key["']?\s*[:=]\s*["']?[^\s"'}]""")
_MASTER_ENVS = ("CLEARML_PROC_MASTER_ID", "TRAINS_PROC_MASTER_ID")
_TRUE = {"1", "true", "yes", "on"}


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in _TRUE


def configured_server() -> str | None:
    """What configures a ClearML server (an environment variable or a config file), or None.
    Reads files and the environment only: clearml is not imported."""
    for name in _SERVER_ENVS:
        if os.environ.get(name):
            return name
    override = next((os.environ[n] for n in _CONFIG_FILE_ENVS if os.environ.get(n)), None)
    for path in [override] if override else _CONFIG_FILES:
        try:
            with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as handle:
                if _ACCESS_KEY.search(handle.read()):
                    return path
        except OSError:
            continue
    return None


def title_and_series(name: str) -> tuple[str, str]:
    """ClearML plots a scalar as a series in a titled graph: ``eval/loss`` is series ``loss``
    of graph ``eval``, so train, eval and test each get one graph. A name without a namespace
    is its own graph."""
    title, _, series = name.partition("/")
    return (title, series) if series else (name, name)


def _report_in_threads() -> None:
    """Make clearml report from threads rather than from a subprocess, unless the user's
    configuration chose: the subprocess (clearml's Linux default) makes every ``close()``
    wait about 12 s for it, threads about 0.1 s. Set through clearml's config override API,
    so the user's own config file stays in charge of everything else."""
    from clearml.config import ConfigSDKWrapper, ConfigWrapper

    if ConfigSDKWrapper.get("development.report_use_subprocess", None) is not None:
        return
    ConfigWrapper.set_overrides({"sdk": {"development": {"report_use_subprocess": False}}})
    # the sdk section is cached apart from the whole configuration
    ConfigSDKWrapper.clear_config_impl()


def _skip_update_check() -> None:
    """Offline means no network: clearml's first Task.init in a process otherwise posts the
    installed versions to https://updates.clear.ml from a thread, offline mode included, and
    no setting turns that off. The flag is clearml's own "already checked"; if a clearml
    release drops it, the check comes back (it fails fast without a network)."""
    try:
        from clearml.utilities.check_updates import CheckPackageUpdates
    except ImportError:
        return
    CheckPackageUpdates._package_version_checked = True


def _parent_process_task() -> str | None:
    """The id of the task a parent process holds open, which clearml makes this process
    report into (it reads ``<pid>:<task id>`` from CLEARML_PROC_MASTER_ID), or None.

    A parent whose task has closed leaves ``<pid>:`` behind, and clearml then answers every
    ``Task.init`` of a child process with a stub that logs nothing: that leftover is removed."""
    for name in _MASTER_ENVS:
        pid, _, task_id = os.environ.get(name, "").partition(":")
        if not pid or pid == str(os.getpid()):
            continue
        if task_id:
            return task_id
        del os.environ[name]
    return None


class ClearMLTracker(Tracker):
    """Logs a trackmux run to a ClearML task.

    Settings (``tracker_config={"clearml": {...}}``; each falls back to its environment
    variable): ``project`` (CLEARML_PROJECT), ``task_name`` (CLEARML_TASK), ``offline``
    (CLEARML_OFFLINE_MODE; default: offline exactly when no server is configured),
    ``artifacts`` (CLEARML_LOG_MODEL).
    """

    name = "clearml"
    requires = ("clearml>=2.0",)
    artifacts_env = LOG_MODEL_ENV

    def __init__(self, **settings):
        super().__init__(**settings)
        self.task = None
        self.task_id: str | None = None
        self.owns_task = False
        self.offline = False
        self.url: str | None = None
        self._logger = None
        self._epoch_step: int | None = None
        self._announced = False

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def mode(cls) -> str:
        if _truthy(os.environ.get(OFFLINE_ENV, "")):
            return "offline"
        return "online" if configured_server() else "offline"

    def artifact_policy(self, default: str = "none") -> str:
        # Hugging Face's CLEARML_LOG_MODEL=true uploads every checkpoint, not the final model
        value = self.setting("artifacts", env=self.artifacts_env)
        if value is True or (isinstance(value, str) and _truthy(value)):
            return "checkpoint"
        return super().artifact_policy(default)

    def _go_offline(self, resume: dict) -> bool:
        if resume.get("offline") is not None:
            return bool(resume["offline"])
        forced = self.setting("offline", env=OFFLINE_ENV)
        if forced is not None:
            return _truthy(forced)
        return configured_server() is None

    @property
    def session_zip(self) -> str | None:
        """The offline session archive ``close()`` writes (what is imported later)."""
        if not self.offline or self.task is None:
            return None
        return f"{self.task.get_offline_mode_folder()}.zip"

    def where(self) -> str | None:
        if self.task_id is None:
            return None
        if self.offline:
            return f"offline task {self.task_id}: {IMPORT_COMMAND} {self.session_zip}"
        return self.url or f"task {self.task_id}"

    # -- the run ------------------------------------------------------------------------

    def start(self, run: RunInfo):
        from clearml import Task

        resume = run.resume or {}
        reason = None
        user_task = Task.current_task()
        if user_task is not None:
            # Hugging Face's rule (#26614): the user's task is theirs to close
            self.task, self.owns_task = user_task, False
            self.offline = Task.is_offline()
        else:
            self.offline = self._go_offline(resume)
            reason = self._offline_reason(resume, Task.is_offline())
            _report_in_threads()
            # process-wide (it also sets OFFLINE_ENV), and only effective before Task.init
            Task.set_offline(self.offline)
            if self.offline:
                _skip_update_check()
            # a child of a process with an open task reports into that task: not ours to close
            parent_task = _parent_process_task()
            self.task = self._open(Task, run, resume.get("task_id"))
            self.owns_task = parent_task is None
        self.task_id = self.task.id
        self._logger = self.task.get_logger()
        # evaluate()/predict() reopen the task of the same Trainer: its config is connected
        if not (run.resume and run.kind != "train"):
            self.task.connect(dict(run.config), name=SECTION)
        if not self.offline:
            self.url = self.task.get_output_log_web_page()
        elif self.owns_task and not self._announced and reason:
            self._announced = True
            logger.warning(
                "clearml: %s: task %s runs offline; upload it later with: %s %s",
                reason,
                self.task_id,
                IMPORT_COMMAND,
                self.session_zip,
            )
        return {"task_id": self.task_id, "offline": self.offline}

    def _open(self, Task, run: RunInfo, task_id: str | None):
        options = {
            "project_name": str(self.setting("project", env=PROJECT_ENV, default=DEFAULT_PROJECT)),
            "task_name": str(self.setting("task_name", env=TASK_ENV, default=run.name)),
            # trackmux reports what is logged; ClearML's own hooks would log it twice (and
            # upload every torch.save), read sys.argv, copy the console, sample the machine
            "auto_connect_frameworks": False,
            "auto_connect_arg_parser": False,
            "auto_connect_streams": False,
            "auto_resource_monitoring": False,
        }
        if task_id:
            # 0: trackmux's steps as they are, not shifted past the task's last iteration
            return Task.init(reuse_last_task_id=task_id, continue_last_task=0, **options)
        # never overwrite an earlier task of the same name, which clearml does by default
        return Task.init(reuse_last_task_id=False, **options)

    def _offline_reason(self, resume: dict, already_offline: bool) -> str:
        if resume.get("offline"):
            return "continuing an offline task"
        # set_offline() also sets OFFLINE_ENV, for the rest of the process
        if already_offline or self.setting("offline", env=OFFLINE_ENV) is not None:
            return f"offline mode is on ({OFFLINE_ENV}, Task.set_offline or the offline setting)"
        return (
            "no ClearML server configured (CLEARML_API_HOST and CLEARML_API_ACCESS_KEY, "
            "or clearml-init)"
        )

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None = None):
        for name, value in metrics.items():
            title, series = title_and_series(name)
            self._logger.report_scalar(title, series, value, iteration=step)
        if epoch is not None and step != self._epoch_step:
            self._epoch_step = step
            self._logger.report_scalar("train", "epoch", epoch, iteration=step)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self._logger.report_single_value(name, value)

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        # OutputModel.update_weights_package() fails in offline mode (clearml 2.1.12:
        # 'DummyModel' object has no attribute 'locked'); an artifact works in both modes
        name = os.path.basename(os.path.normpath(path)) if kind == "checkpoint" else "model"
        self.task.upload_artifact(
            name,
            artifact_object=os.fspath(path),
            metadata={"kind": kind, "step": step},
            wait_on_upload=True,
        )

    def flush(self) -> None:
        if self.task is not None:
            self.task.flush(wait_for_uploads=True)

    def finish(self, status: str) -> None:
        if self.task is None:
            return
        kind = self.run_info.kind if self.run_info else "run"
        self._logger.report_text(f"trackmux: {kind} ended: {status}", print_console=False)
        if not self.owns_task:
            self.task.flush(wait_for_uploads=True)
            return
        # close() marks the task completed, not knowing why training ended, and stops the
        # watchdog that would kill this process on a status change it did not make: the
        # real status goes after it
        self.task.close()
        if status == FAILED:
            self.task.mark_failed(status_reason="trackmux: training failed", force=True)
        elif status == KILLED:
            self.task.mark_stopped(force=True, status_message="trackmux: training interrupted")
