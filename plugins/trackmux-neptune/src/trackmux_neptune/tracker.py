"""The Neptune tracker: one Neptune run per training, written with the neptune 1.x client.

Mode: ``async`` with an API token (``NEPTUNE_API_TOKEN``), ``offline`` without one, or what
``NEPTUNE_MODE`` says. Offline, the run is written under ``NEPTUNE_DATA_DIRECTORY`` (default
``<output_dir>/.neptune``, never the working directory) and uploaded later by ``neptune sync``.

What, when:

- start: the flattened config under ``<namespace>/params`` (default namespace ``trackmux``),
  ``<namespace>/status = "running"``;
- every log: each metric as a float series at its trackmux name (``train/loss``,
  ``eval/loss``...) at the trainer's global step; the epoch as ``<namespace>/epoch``;
- end of training: the summary values (``train/train_runtime``...) as one-point series;
  checkpoints or the final model under ``<namespace>/checkpoints/`` as the artifact policy asks;
- finish: ``<namespace>/status`` ("success", "failed", "killed") and Neptune's own
  ``sys/failed``.

One run per training: Neptune cannot reopen an offline run by id (its offline backend answers
``RunNotFound``, and ``neptune sync`` uploads every offline directory as a new run), so a run
trackmux opened offline stays open after finish() until the process exits, and evaluate(),
predict() or a resume in the same process continue it. Online, finish() stops the run and the
next session reopens it with ``init_run(with_id=...)``. A run passed in by the user (the ``run``
setting) is logged into and never stopped.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import shlex
import shutil
import threading
import uuid
from dataclasses import dataclass
from typing import Any

from trackmux.tracker import SUCCESS, RunInfo, Tracker

# under "trackmux": its one offline line shows with trackmux's own INFO lines
logger = logging.getLogger("trackmux.neptune")

TOKEN_ENV = "NEPTUNE_API_TOKEN"
PROJECT_ENV = "NEPTUNE_PROJECT"
MODE_ENV = "NEPTUNE_MODE"
DATA_DIRECTORY_ENV = "NEPTUNE_DATA_DIRECTORY"
CHECKPOINTS_ENV = "NEPTUNE_LOG_CHECKPOINTS"
#: ``neptune sync --path P`` looks for a directory of this name in P (or P itself)
DATA_DIRECTORY_NAME = ".neptune"
DEFAULT_NAMESPACE = "trackmux"
ONLINE_MODES = ("async", "sync")
LOCAL_MODES = ("offline", "debug")
#: Hugging Face's NeptuneCallback(log_checkpoints=...) values as trackmux artifact policies
CHECKPOINT_POLICIES = {"same": "checkpoint", "last": "last", "best": "best"}
#: the client's own loggers: their info lines ("Neptune initialized", "Shutting down
#: background jobs") are replaced by trackmux's one line where a run is
_NEPTUNE_LOGGERS = ("neptune",)


@dataclass
class _KeptRun:
    run: Any
    last_steps: dict[str, int]
    data_directory: str | None


# Offline runs this process keeps open, by trackmux run key (see the module docstring)
_OPEN_RUNS: dict[str, _KeptRun] = {}
_OPEN_RUNS_LOCK = threading.Lock()


class NeptuneTracker(Tracker):
    """Logs a trackmux run to Neptune.

    Settings (``tracker_config={"neptune": {...}}``; each falls back to its environment
    variable): ``project`` (NEPTUNE_PROJECT), ``api_token`` (NEPTUNE_API_TOKEN), ``mode``
    (NEPTUNE_MODE), ``data_directory`` (NEPTUNE_DATA_DIRECTORY), ``artifacts``
    (NEPTUNE_LOG_CHECKPOINTS: none, same, last, best, end), ``namespace``, ``tags``, ``run``
    (a neptune Run of yours to log into).
    """

    name = "neptune"
    requires = ("neptune>=1.14,<2",)
    artifacts_env = CHECKPOINTS_ENV

    def __init__(self, **settings):
        super().__init__(**settings)
        self.run = None
        self.owns_run = False
        self.key: str | None = None
        self.mode_used: str | None = None
        self.data_directory: str | None = None
        self.project: str | None = None
        #: the last step of each series of the run: Neptune takes strictly increasing steps
        self.last_steps: dict[str, int] = {}
        self._not_finite: set[str] = set()
        self.url: str | None = None

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def mode(cls) -> str:
        mode = os.environ.get(MODE_ENV, "").strip().lower()
        if mode in LOCAL_MODES:
            return "offline"
        if mode in ONLINE_MODES or os.environ.get(TOKEN_ENV):
            return "online"
        return "offline"

    def _mode_and_token(self) -> tuple[str, str | None]:
        token = self.setting("api_token", env=TOKEN_ENV)
        mode = self.setting("mode", env=MODE_ENV)
        if mode is None:
            return ("async" if token else "offline"), token
        mode = str(mode).strip().lower()
        if mode not in ONLINE_MODES + LOCAL_MODES:
            raise ValueError(
                f"neptune: mode {mode!r} cannot log a training; choose one of "
                f"{', '.join(ONLINE_MODES + LOCAL_MODES)} (NEPTUNE_MODE)"
            )
        if mode in ONLINE_MODES and not token:
            raise ValueError(
                f"neptune: mode {mode!r} needs an API token (NEPTUNE_API_TOKEN); "
                "without one, leave NEPTUNE_MODE unset to log offline"
            )
        return mode, token

    def artifact_policy(self, default: str = "none") -> str:
        value = self.setting("artifacts", env=self.artifacts_env)
        if isinstance(value, str) and value.strip().lower() in CHECKPOINT_POLICIES:
            return CHECKPOINT_POLICIES[value.strip().lower()]
        return super().artifact_policy(default)

    @property
    def namespace(self) -> str:
        return str(self.setting("namespace", default=DEFAULT_NAMESPACE)).strip("/")

    def sanitize_name(self, name: str) -> str:
        # "/" separates Neptune namespaces: an empty segment is not a valid path
        return "/".join(part for part in str(name).split("/") if part.strip()) or "_"

    def where(self) -> str | None:
        if self.mode_used in ONLINE_MODES:
            return self.url
        if self.mode_used == "debug":
            return "neptune debug mode: nothing was kept"
        if self.data_directory is None:
            return None  # not started, or the user's own run: where they put it
        return f"offline run in {self.data_directory}; upload: {self._sync_command()}"

    def _sync_command(self) -> str:
        directory = self.data_directory or DATA_DIRECTORY_NAME
        if os.path.basename(directory) == DATA_DIRECTORY_NAME:
            directory = os.path.dirname(directory)
        project = self.project or "WORKSPACE/PROJECT"
        path = shlex.quote(directory)
        return f"neptune sync --path {path} --project {shlex.quote(project)} --offline-only"

    # -- the run ------------------------------------------------------------------------

    def start(self, run: RunInfo) -> dict[str, Any]:
        mode, token = self._mode_and_token()
        resume = run.resume or {}
        self.project = self.setting("project", env=PROJECT_ENV)
        user_run = self.settings.get("run")
        continued = False
        if user_run is not None:
            # Hugging Face's rule: log into the user's run, leave stopping it to them
            if self.run is not user_run:
                self.last_steps = {}
            self.run, self.owns_run, self.mode_used = user_run, False, mode
            self.key = self.key or resume.get("key") or uuid.uuid4().hex
        else:
            continued = self._continue(resume, mode)
            if not continued:
                self._open(run, mode, token, resume)
        namespace = self.namespace
        if not continued:
            self.run[f"{namespace}/run_key"] = self.key
            self.run[f"{namespace}/params"] = {
                key: _param_value(value) for key, value in run.config.items()
            }
        self.run[f"{namespace}/status"] = "running"
        identity = {"key": self.key, "mode": self.mode_used}
        if self.mode_used in ONLINE_MODES and self.owns_run:
            identity["id"] = self._sys_id
        return identity

    def _continue(self, resume: dict, mode: str) -> bool:
        """Continue the offline run this process still holds open for ``resume``; stop the
        run this tracker holds when the new session does not continue it."""
        key = resume.get("key")
        kept = None
        if key and mode in LOCAL_MODES:
            with _OPEN_RUNS_LOCK:
                kept = _OPEN_RUNS.get(key)
        if kept is None or kept.run is not self.run:
            self._stop_own_run()
        if kept is None:
            return False
        self.run, self.last_steps, self.data_directory = (
            kept.run,
            kept.last_steps,
            kept.data_directory,
        )
        self.owns_run, self.key, self.mode_used = True, key, mode
        return True

    def _open(self, run: RunInfo, mode: str, token: str | None, resume: dict) -> None:
        import neptune

        kwargs: dict[str, Any] = {
            "name": run.name,
            "mode": mode,
            # no hidden cost or noise: no hardware sampling thread (and its NVML warnings
            # without a GPU), no stdout/stderr capture, no git or source snapshot
            "capture_hardware_metrics": False,
            "capture_stdout": False,
            "capture_stderr": False,
            "capture_traceback": False,
            "git_ref": False,
            "source_files": [],
        }
        if self.project:
            kwargs["project"] = self.project
        if token:
            kwargs["api_token"] = token
        tags = self.setting("tags")
        if tags:
            kwargs["tags"] = [tags] if isinstance(tags, str) else list(tags)
        previous = resume.get("key")
        if mode in ONLINE_MODES and resume.get("id"):
            kwargs["with_id"] = resume["id"]
        elif previous and mode in LOCAL_MODES:
            logger.warning(
                "neptune: an offline run cannot be reopened in a new process; this resume "
                "writes a new offline run carrying the same %s/run_key %s",
                self.namespace,
                previous,
            )
        directory = self.setting(
            "data_directory",
            env=DATA_DIRECTORY_ENV,
            default=os.path.join(run.output_dir, DATA_DIRECTORY_NAME),
        )
        self.data_directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        with _environment(DATA_DIRECTORY_ENV, self.data_directory), _quiet_neptune():
            self.run = neptune.init_run(**kwargs)
        if previous is None or previous != self.key:
            # a run reopened by this tracker (online: evaluate() after train()) keeps its steps
            self.last_steps = {}
        self.owns_run, self.mode_used = True, mode
        self.key = previous or uuid.uuid4().hex
        if mode in ONLINE_MODES:
            self.url = self._url
        if mode == "offline":
            _register_open_run(self.key, _KeptRun(self.run, self.last_steps, self.data_directory))
            reason = "" if self.setting("mode", env=MODE_ENV) else f"no {TOKEN_ENV}: "
            logger.info(
                "neptune: %slogging offline to %s; upload later with: %s",
                reason,
                self.data_directory,
                self._sync_command(),
            )
        elif mode == "debug":
            _register_open_run(self.key, _KeptRun(self.run, self.last_steps, None))
            logger.warning("neptune: NEPTUNE_MODE=debug keeps nothing (and drops steps)")

    @property
    def _sys_id(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.run["sys/id"].fetch()
        return None

    @property
    def _url(self) -> str | None:
        with contextlib.suppress(Exception):
            return self.run.get_url()
        return None

    # -- metrics, artifacts, end -----------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        for key, value in params.items():
            self.run[f"{self.namespace}/params/{key}"] = _param_value(value)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None = None):
        run, last_steps = self.run, self.last_steps
        for name, value in metrics.items():
            if not math.isfinite(value):
                # neptune 1.x skips NaN and inf with a warning on every call: say it once
                if name not in self._not_finite:
                    self._not_finite.add(name)
                    logger.warning(
                        "neptune: %s is %s at step %d; Neptune stores finite numbers only, "
                        "so such points are left out",
                        name,
                        value,
                        step,
                    )
                continue
            if step > last_steps.get(name, -1):
                run[name].append(value, step=step)
                last_steps[name] = step
            else:
                # Neptune would reject the point at upload: evaluate() after train() at the
                # same step, or a resume re-logging steps the interrupted run logged
                run[f"{self.namespace}/{self.run_info.kind}/{name}"] = value
        if epoch is not None:
            run[f"{self.namespace}/epoch"] = epoch

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        name = os.path.basename(os.path.normpath(path)) if kind == "checkpoint" else "model"
        source = os.path.abspath(path)
        if self.mode_used == "offline":
            # neptune sync reads the files when it uploads, maybe days later: by then the
            # checkpoint may be rotated away (save_total_limit), so keep a copy beside the run
            copy = os.path.join(self.data_directory, "trackmux-files", self.key, name)
            shutil.copytree(source, copy, dirs_exist_ok=True)
            source = copy
        self.run[f"{self.namespace}/checkpoints/{name}"].upload_files(source)

    def flush(self) -> None:
        if self.run is not None:
            # to Neptune's own disk queue (offline: the run's files); never waits on the server
            self.run.wait(disk_only=True)

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        self.run[f"{self.namespace}/status"] = status
        if not self.owns_run:
            return
        self.run["sys/failed"] = status != SUCCESS
        if self.mode_used in LOCAL_MODES:
            self.run.wait(disk_only=True)  # kept open: see the module docstring
            return
        timeout = getattr(self.run_info.args, "tracker_close_timeout", None)
        with _quiet_neptune():
            # what is not sent by then stays in the disk queue, for `neptune sync`
            self.run.stop(seconds=max(1.0, timeout - 1.0) if timeout else None)
        self.run = None

    def _stop_own_run(self) -> None:
        if self.run is None:
            return
        if self.owns_run:
            with _OPEN_RUNS_LOCK:
                for key, kept in list(_OPEN_RUNS.items()):
                    if kept.run is self.run:
                        del _OPEN_RUNS[key]
            with _quiet_neptune():
                self.run.stop()
        self.run = None


def _param_value(value):
    """Neptune stores str, bool, int and finite floats; anything else as its string (what
    neptune's stringify_unsupported does), so no param is dropped with a warning."""
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)


def _register_open_run(key: str, kept: _KeptRun) -> None:
    with _OPEN_RUNS_LOCK:
        _OPEN_RUNS[key] = kept
    # after the exit hook neptune registered for this run, so it runs first (atexit is
    # LIFO): the runs stop without neptune's shutdown messages, and its own stop() returns
    atexit.unregister(_stop_open_runs)
    atexit.register(_stop_open_runs)


def _stop_open_runs() -> None:
    with _OPEN_RUNS_LOCK:
        runs = list(_OPEN_RUNS.values())
        _OPEN_RUNS.clear()
    with _quiet_neptune():
        for kept in runs:
            with contextlib.suppress(Exception):
                kept.run.stop()


@contextlib.contextmanager
def _environment(name: str, value: str):
    """``name=value`` in the environment for the block: neptune reads its data directory
    only from there, when a run is created."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@contextlib.contextmanager
def _quiet_neptune():
    loggers = [logging.getLogger(name) for name in _NEPTUNE_LOGGERS]
    levels = [item.level for item in loggers]
    for item in loggers:
        if item.getEffectiveLevel() < logging.WARNING:
            item.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for item, level in zip(loggers, levels):
            item.setLevel(level)
