"""The Aim tracker: one ``aim.Run`` per trackmux run, in a local Aim repository.

Where: the ``repo`` setting, else ``$AIM_REPO``, else ``output_dir``. Aim keeps its data in
``<repo>/.aim``, which ``aim up --repo <repo>`` opens. An ``aim://host:port`` repo is an Aim
tracking server: trackmux uses one only when it is configured so.

What, when:

- start: the run name, the experiment, the flattened config as the run's ``hparams``;
- every log: ``Run.track(value, name, step, epoch)`` per metric, at the global step;
- end of training: the summary values (``train/train_runtime``...) at the final step;
- finish: the status ("success", "failed", "killed") as the run attribute ``status``, then
  the run is closed (its lock released) and indexed, so ``aim.Repo`` queries and ``aim up``
  see it at once.

The run's hash is its identity: a resumed training reopens the same Aim run. Aim keeps one
value per step, so the points the resumed run logs again replace the ones the interrupted
run logged after its checkpoint.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from trackmux.tracker import RunInfo, Tracker

logger = logging.getLogger(__name__)

REPO_ENV = "AIM_REPO"
EXPERIMENT_ENV = "AIM_EXPERIMENT"
REMOTE_PREFIX = "aim://"
HPARAMS = "hparams"
STATUS = "status"


def _is_remote(repo: str) -> bool:
    return repo.startswith(REMOTE_PREFIX)


class AimTracker(Tracker):
    """Logs a trackmux run to an Aim repository.

    Settings (``tracker_config={"aim": {...}}``): ``repo`` (AIM_REPO), ``experiment``
    (AIM_EXPERIMENT), ``system_tracking_interval`` (seconds between Aim's CPU/GPU/memory
    samples, Aim's default 10; 0 or None turns them off), ``capture_terminal_logs`` (default
    False: trackmux keeps the console), ``batch_window`` (seconds, default 0.5).
    """

    name = "aim"
    requires = ("aim>=3.29,<4",)
    # points gathered for half a second go to Aim in one pass of the worker
    batch_window = 0.5

    def __init__(self, **settings):
        super().__init__(**settings)
        self.repo: str | None = None
        self.run_hash: str | None = None
        self._run = None

    @classmethod
    def mode(cls) -> str:
        return "online" if _is_remote(os.environ.get(REPO_ENV, "")) else "local"

    def where(self) -> str | None:
        if self.run_hash is None:
            return None
        if _is_remote(self.repo):
            return f"run {self.run_hash} on the Aim server {self.repo}"
        return f"run {self.run_hash}: aim up --repo {self.repo}"

    # -- the store ----------------------------------------------------------------------

    #: a local repository is a path (kept relative to output_dir in checkpoints); a server
    #: is a store, continued only while it is still the configured one
    identity_paths = ("repo",)
    identity_store = ("remote",)

    def _configured_repo(self, run: RunInfo) -> str:
        repo = self.setting("repo", env=REPO_ENV, default=run.output_dir)
        if not isinstance(repo, str | os.PathLike) or not os.fspath(repo).strip():
            raise ValueError(
                f"aim: repo={repo!r} is not a directory or an aim://host:port server; set "
                f"tracker_config={{'aim': {{'repo': 'DIR'}}}} or {REPO_ENV}=DIR"
            )
        repo = os.fspath(repo).strip()
        if _is_remote(repo):
            return repo
        return os.path.abspath(os.path.expanduser(repo))

    def configured_store(self, run: RunInfo) -> dict[str, Any]:
        repo = self._configured_repo(run)
        # "remote" always compared: a checkpoint never sends a local run to a server
        return {"remote": repo} if _is_remote(repo) else {"repo": repo, "remote": ""}

    def _system_tracking_interval(self):
        from aim.ext.resource.configs import DEFAULT_SYSTEM_TRACKING_INT

        value = self.setting("system_tracking_interval", DEFAULT_SYSTEM_TRACKING_INT)
        if value is None or value is False:
            return None
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = -1.0
        if isinstance(value, bool) or seconds < 0:
            raise ValueError(
                f"aim: system_tracking_interval={value!r} must be a number of seconds "
                "(0 or None turns system metrics off)"
            )
        return seconds or None

    # -- the run ------------------------------------------------------------------------

    def start(self, run: RunInfo) -> dict[str, Any]:
        from aim import Run
        from aim.sdk.errors import MissingRunError

        resume = run.resume or {}
        repo = resume.get("remote") or resume.get("repo") or self._configured_repo(run)
        options = {
            "repo": repo,
            "system_tracking_interval": self._system_tracking_interval(),
            # Aim's log_system_params would store every environment variable: credentials
            # included. It stays off.
            "log_system_params": False,
            "capture_terminal_logs": bool(self.setting("capture_terminal_logs", False)),
        }
        aim_run = None
        if resume.get("run_hash"):
            try:
                aim_run = Run(str(resume["run_hash"]), **options)
            except MissingRunError:
                logger.warning(
                    "aim: run %s to resume is not in %s; starting a new run",
                    resume["run_hash"],
                    repo,
                )
        if aim_run is None:
            experiment = self.setting("experiment", env=EXPERIMENT_ENV)
            aim_run = Run(experiment=experiment, **options)
            aim_run.name = run.name
        self._run = aim_run
        self.repo = repo
        self.run_hash = aim_run.hash
        self.log_params(run.config)
        key = "remote" if _is_remote(repo) else "repo"
        return {"run_hash": self.run_hash, key: repo}

    def log_params(self, params: dict[str, Any]) -> None:
        # key by key: a resumed run keeps its params and gains the new ones
        for key, value in params.items():
            self._run.set((HPARAMS, key), value, strict=False)

    def log_metrics(self, metrics, step, epoch=None):
        for name, value in metrics.items():
            self._run.track(value, name=name, step=step, epoch=epoch)

    def finish(self, status: str) -> None:
        if self._run is None:
            return
        aim_run, self._run = self._run, None
        aim_run[STATUS] = status
        aim_run.close()
        if not _is_remote(self.repo):
            _index(aim_run.repo, self.run_hash)


def _index(repo, run_hash: str) -> None:
    """Add the closed run to the repository's index, as ``aim up`` does when it starts:
    ``aim.Repo`` reads runs from the index, so a run not indexed yet is invisible to
    ``Repo.get_run`` and to queries. Skipped (``aim up`` indexes it later) when another
    process holds the index."""
    from aim.sdk.index_manager import RepoIndexManager

    try:
        RepoIndexManager(repo).index(run_hash)
    except Exception as error:  # the index is busy: Aim's UI indexes the run on its own
        logger.info("aim: run %s not indexed now (%s); `aim up` indexes it", run_hash, error)
