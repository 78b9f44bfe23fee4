"""The Trackio tracker: trackio's local store (one SQLite file per project), never a Space.

Where: the ``dir`` setting, else ``$TRACKIO_DIR``, else ``<output_dir>/trackio`` (trackio's
own default would be ``~/.cache/huggingface/trackio``). Project: the ``project`` setting, else
``$TRACKIO_PROJECT``, else "trackmux". The trackio run is named after the trainer's run name.

What, when:

- start: the flattened config as the run's config (trackio stores it with the first points);
- every log: one trackio record per step, at the trainer's global step;
- end of training: the summary values (``train/train_runtime``...) at the final step;
- finish: trackio has no run status, so a failed run gets an ERROR alert ("training failed")
  and an interrupted one a WARN alert ("training interrupted"), which its dashboard shows.

A resumed training continues the same trackio run (its id); points logged after the
checkpoint by the interrupted run stay. trackio is imported in :meth:`TrackioTracker.start`,
on the tracker's worker thread.
"""

from __future__ import annotations

import functools
import logging
import os
import shlex
from typing import Any

from trackmux.tracker import FAILED, KILLED, RunInfo, Tracker

from . import store

logger = logging.getLogger(__name__)

DIR_ENV = "TRACKIO_DIR"
PROJECT_ENV = "TRACKIO_PROJECT"
DEFAULT_PROJECT = "trackmux"
DEFAULT_DIR = "trackio"
#: trackio.utils.RESERVED_KEYS: trackio would rename such a metric "__<name>" on its own
RESERVED_KEYS = frozenset({"project", "run", "timestamp", "step", "time", "metrics"})
#: where trackio would log somewhere else than its local store
REMOTE_ENV = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL")
ALERTS = {FAILED: ("ERROR", "training failed"), KILLED: ("WARN", "training interrupted")}


@functools.cache
def _local_run_class():
    from trackio.run import Run

    class LocalRun(Run):
        def _get_username(self):
            # trackio asks the Hugging Face Hub who the user is (whoami) when a token is
            # configured: a local store needs no account, and trackmux no network
            return None

    return LocalRun


def _config(config: dict[str, Any]) -> dict[str, Any]:
    """trackio refuses config keys that start with "_" (its own): such a key loses its
    underscores, or is prefixed with "param" if that name is taken."""
    clean = {}
    for key, value in config.items():
        if key.startswith("_"):
            bare = key.lstrip("_")
            key = bare if bare and bare not in config else f"param{key}"
        clean[key] = value
    return clean


class TrackioTracker(Tracker):
    """Logs a trackmux run to trackio's local store.

    Settings (``tracker_config={"trackio": {...}}``; each falls back to its environment
    variable): ``dir`` (TRACKIO_DIR), ``project`` (TRACKIO_PROJECT).
    """

    name = "trackio"
    requires = ("trackio>=0.45,<1",)
    identity_paths = ("dir",)

    def __init__(self, **settings):
        super().__init__(**settings)
        self.directory: str | None = None
        self.project: str | None = None
        self.run_id: str | None = None
        self.run_name: str | None = None
        self._run = None
        self._holds_store = False

    def where(self) -> str | None:
        if self.run_id is None:
            return None
        return (
            f"TRACKIO_DIR={shlex.quote(self.directory)} trackio show "
            f"--project {shlex.quote(self.project)}"
        )

    def sanitize_name(self, name: str) -> str:
        # the names trackio would rename itself ("step" -> "__step", "__x" -> "____x"),
        # mapped once to names it keeps, so trackmux sees (and reports) any merge
        if name in RESERVED_KEYS:
            return f"{name}_"
        if name.startswith("__"):
            return "_" + name.lstrip("_")
        return name

    # -- the run ------------------------------------------------------------------------

    def configured_store(self, run: RunInfo) -> dict[str, Any]:
        return {"dir": self._configured_dir(run)}

    def _configured_dir(self, run: RunInfo) -> str:
        directory = self.setting(
            "dir", env=DIR_ENV, default=os.path.join(run.output_dir, DEFAULT_DIR)
        )
        return os.path.abspath(os.path.expanduser(os.fspath(directory)))

    def start(self, run: RunInfo) -> dict[str, Any]:
        from trackio.sqlite_storage import SQLiteStorage

        for variable in REMOTE_ENV:
            if os.environ.get(variable):
                logger.warning(
                    "trackio: %s is set, but trackmux writes trackio's local store only; "
                    "publish it afterwards with `trackio sync`",
                    variable,
                )
        resume = run.resume or {}
        project = str(
            resume.get("project") or self.setting("project", DEFAULT_PROJECT, env=PROJECT_ENV)
        )
        SQLiteStorage.validate_project_name(project)
        directory = resume.get("dir") or self._configured_dir(run)
        self.directory = str(store.acquire(directory))
        self._holds_store = True
        self.project = project
        try:
            self._run = self._open(SQLiteStorage, project, run, resume)
        except BaseException:
            self._release_store()
            raise
        self.run_id, self.run_name = self._run.id, self._run.name
        return {
            "dir": self.directory,
            "project": project,
            "run_id": self.run_id,
            "run_name": self.run_name,
        }

    def _open(self, storage, project: str, run: RunInfo, resume: dict):
        run_id, name, last_step = None, run.name, None
        if resume.get("run_id"):
            if any(record["id"] == resume["run_id"] for record in storage.get_run_records(project)):
                run_id, name = resume["run_id"], resume.get("run_name") or run.name
                last_step = storage.get_max_step_for_run(project, name, run_id=run_id)
            else:
                logger.warning(
                    "trackio: run %s to resume is not in project %r of %s; starting a new run",
                    resume["run_id"],
                    project,
                    self.directory,
                )
        return _local_run_class()(
            url=None,
            project=project,
            client=None,
            name=name,
            run_id=run_id,
            config=_config(run.config),
            initial_last_step=last_step,
            auto_log_gpu=False,
            auto_log_cpu=False,
        )

    def log_metrics(self, metrics, step, epoch=None):
        self._run.log(dict(metrics), step=step)

    def finish(self, status: str) -> None:
        if self._run is None:
            return
        try:
            if status in ALERTS:
                from trackio.alerts import AlertLevel

                level, title = ALERTS[status]
                self._run.alert(
                    title, text=f"trackmux ended the run as {status}", level=AlertLevel[level]
                )
            # writes what is queued and stops trackio's sender thread
            self._run.finish()
        finally:
            self._run = None
            self._release_store()

    def _release_store(self) -> None:
        if self._holds_store:
            self._holds_store = False
            store.release()
