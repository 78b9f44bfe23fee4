"""The MLflow tracker: one MLflow run per trackmux session, written with ``MlflowClient``.

Everything is logged through an ``MlflowClient`` bound to one tracking URI, never through
mlflow's fluent (process-global) API, so two Trainers in one process cannot leak runs or URIs
into each other. The fluent API is only read, to find a run the user started themselves.
mlflow is imported in :meth:`MlflowTracker.start`, on the tracker's worker thread.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any
from urllib.parse import urlparse

from trackmux.tracker import FAILED, KILLED, SUCCESS, RunInfo, Tracker

logger = logging.getLogger(__name__)

#: MLflow's limits (mlflow.utils.validation, 2.x and 3.x): key length, param value length,
#: params/tags per log_batch request, metrics per log_batch request, tag value length.
MAX_KEY_LENGTH = 250
MAX_PARAM_VALUE_LENGTH = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
MAX_TAG_VALUE_LENGTH = 8000

DEFAULT_DB = "mlflow.db"
#: two trackers creating a default store at once (a run beside an abandoned one, two
#: Trainers on threads) would run alembic migrations concurrently, which share module
#: globals and fail with KeyError('config')
_CREATING_STORE = threading.Lock()
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_RUN_TAG = "mlflow.parentRunId"
_STATUS = {SUCCESS: "FINISHED", FAILED: "FAILED", KILLED: "KILLED"}
_LOCAL_SCHEMES = {"", "file", "sqlite"}
_TRUE = {"1", "true", "yes", "on"}
# MLflow accepts letters, digits, "_", "-", ".", " ", "/" and, except on Windows, ":"
_BAD_CHARACTERS = re.compile(r"[^\w./\- ]" if os.name == "nt" else r"[^\w./\- :]")


def _truthy(value) -> bool:
    return value is True or str(value).strip().lower() in _TRUE


def _scheme(uri: str) -> str:
    if os.path.isabs(uri):
        return ""  # a Windows drive letter is not a scheme
    # the bare word "databricks" (or "databricks://profile") is Databricks' hosted MLflow
    return "databricks" if uri.split(":", 1)[0] == "databricks" else urlparse(uri).scheme.lower()


def _is_local(uri: str) -> bool:
    return _scheme(uri) in _LOCAL_SCHEMES


def _default_uri(output_dir: str) -> str:
    return f"sqlite:///{os.path.join(os.path.abspath(output_dir), DEFAULT_DB)}"


def _user_active_run() -> tuple[str, str] | None:
    """(run id, tracking URI) of the run the user started with ``mlflow.start_run()`` in this
    thread, if any. mlflow is not imported for this: a user with an active run imported it."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or not hasattr(mlflow, "active_run"):
        return None
    run = mlflow.active_run()
    if run is None:
        return None
    return run.info.run_id, mlflow.get_tracking_uri()


class MlflowTracker(Tracker):
    """Logs a trackmux run to MLflow.

    Settings (``tracker_config={"mlflow": {...}}``; each falls back to its environment
    variable): ``tracking_uri`` (MLFLOW_TRACKING_URI), ``experiment_name``
    (MLFLOW_EXPERIMENT_NAME), ``run_id`` (MLFLOW_RUN_ID), ``nested`` (MLFLOW_NESTED_RUN),
    ``tags`` (MLFLOW_TAGS, a JSON object), ``max_log_params`` (MLFLOW_MAX_LOG_PARAMS),
    ``artifacts`` (HF_MLFLOW_LOG_ARTIFACTS), ``batch_window`` (seconds, default 1).
    """

    name = "mlflow"
    requires = ("mlflow>=2.10",)
    # Hugging Face's MLflowCallback flattens with ".": keep its param names
    param_separator = "."
    max_name_length = MAX_KEY_LENGTH
    max_param_value_length = MAX_PARAM_VALUE_LENGTH
    artifacts_env = "HF_MLFLOW_LOG_ARTIFACTS"
    # points logged within a second go in one log_batch request (a flush, a save or the
    # end of the run sends what is pending at once)
    batch_window = 1.0

    def __init__(self, **settings):
        super().__init__(**settings)
        self.client = None
        self.tracking_uri: str | None = None
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.owns_run = False
        self._artifact_root: str | None = None
        self._proxy = None
        self._existing_params: dict[str, str] = {}
        self._user_run: tuple[str, str] | None = None

    def prepare(self, run: RunInfo) -> None:
        # mlflow's active run is thread-local and start() runs on the worker thread: the loop
        # thread is the one place the user's own run (``with mlflow.start_run(): ...``) shows
        self._user_run = _user_active_run()

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def mode(cls) -> str:
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        return "local" if not uri or _is_local(uri) else "online"

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        # Hugging Face's switch, compared the way it does (upper-cased "TRUE" only)
        if os.environ.get("DISABLE_MLFLOW_INTEGRATION", "").upper() == "TRUE":
            return "DISABLE_MLFLOW_INTEGRATION=TRUE is set"
        return None

    def where(self) -> str | None:
        if self.run_id is None:
            return None
        scheme = _scheme(self.tracking_uri)
        if scheme in _LOCAL_SCHEMES:
            return f"run {self.run_id}: mlflow ui --backend-store-uri {self.tracking_uri}"
        if scheme in ("http", "https"):
            base = self.tracking_uri.rstrip("/")
            return f"{base}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"run {self.run_id} on {self.tracking_uri}"

    def sanitize_name(self, name: str) -> str:
        clean = _BAD_CHARACTERS.sub("_", str(name))
        # MLflow rejects names that a file path would normalise into another name
        # ("a//b", "/a", "a/", "./a", "../a"): drop empty segments, mask dot segments
        parts = ["_" * len(p) if p in (".", "..") else p for p in clean.split("/") if p]
        # the length limit (max_name_length) is trackmux's to apply: it shortens an
        # over-long name with a hash suffix, so two long names stay two series
        return "/".join(parts) or "_"

    # -- the run ------------------------------------------------------------------------

    identity_store = ("tracking_uri",)

    def configured_store(self, run: RunInfo) -> dict[str, Any]:
        """The tracking URI start() uses when the identity names none: the explicit one,
        the user's active run's, or the default store under output_dir."""
        user_run = self._user_run or _user_active_run()
        uri = self.setting("tracking_uri", env="MLFLOW_TRACKING_URI")
        if not uri:
            uri = user_run[1] if user_run else _default_uri(run.output_dir)
        return {"tracking_uri": str(uri)}

    def start(self, run: RunInfo) -> dict[str, Any]:
        from mlflow.tracking import MlflowClient

        # "Creating initial MLflow database tables..." and alembic's migration lines
        self.quiet_backend_loggers("mlflow", "alembic")

        tags = self._tags()  # a malformed MLFLOW_TAGS fails before anything is created
        resume = run.resume or {}
        user_run = self._user_run or _user_active_run()
        explicit_uri = self.setting("tracking_uri", env="MLFLOW_TRACKING_URI")
        if explicit_uri:
            uri = explicit_uri
        elif user_run:
            uri = user_run[1]
        else:
            default = _default_uri(run.output_dir)
            uri = resume.get("tracking_uri") or default
            if uri == default:
                self._prepare_default_store(run.output_dir)
        if user_run and user_run[1] != uri:
            logger.warning(
                "mlflow: ignoring the active run %s: it is on %s, trackmux logs to %s",
                user_run[0],
                user_run[1],
                uri,
            )
            user_run = None
        self.tracking_uri = str(uri)
        self.client = MlflowClient(self.tracking_uri)
        self._proxy = None
        self._open_run(run.name, resume, user_run)
        self._log_tags(tags)
        self._log_params(run.config)
        return {
            "run_id": self.run_id,
            "tracking_uri": self.tracking_uri,
            "experiment_id": self.experiment_id,
        }

    def _open_run(self, name: str, resume: dict, user_run: tuple[str, str] | None) -> None:
        nested = _truthy(self.setting("nested", env="MLFLOW_NESTED_RUN", default=False))
        given = self.setting("run_id", env="MLFLOW_RUN_ID")
        user_id = user_run[0] if user_run else None
        if given:
            self._reopen(str(given), owned=given != user_id, required=True)
        elif user_id and not nested:
            # Hugging Face's rule (#16131): log into the user's run, leave closing it to them
            self._reopen(user_id, owned=False, required=True)
        elif resume.get("run_id") and self._reopen(resume["run_id"], owned=True):
            pass
        else:
            tags = {PARENT_RUN_TAG: user_id} if nested and user_id else None
            created = self.client.create_run(self._experiment_id(), tags=tags, run_name=name)
            self.run_id = created.info.run_id
            self.experiment_id = created.info.experiment_id
            self.owns_run = True
            self._existing_params = {}

    def _reopen(self, run_id: str, *, owned: bool, required: bool = False) -> bool:
        """Continue the run ``run_id``; False when it is gone and need not exist."""
        from mlflow.exceptions import MlflowException

        try:
            existing = self.client.get_run(run_id)
        except MlflowException as error:
            if required:
                raise ValueError(
                    f"mlflow: run {run_id} not found on {self.tracking_uri}"
                ) from error
            existing = None
        if existing is None or existing.info.lifecycle_stage == "deleted":
            if required:
                raise ValueError(f"mlflow: run {run_id} on {self.tracking_uri} is deleted")
            logger.warning(
                "mlflow: run %s to resume is not on %s (or is deleted); starting a new run",
                run_id,
                self.tracking_uri,
            )
            return False
        self.run_id = run_id
        self.experiment_id = existing.info.experiment_id
        self.owns_run = owned
        self._existing_params = dict(existing.data.params)
        if owned and existing.info.status != "RUNNING":
            self.client.update_run(run_id, status="RUNNING")
        return True

    def _prepare_default_store(self, output_dir: str) -> None:
        """Keep the default store's artifacts under ``<output_dir>/mlartifacts`` rather than
        mlflow's default, ``./mlruns`` in whatever the working directory is."""
        directory = os.path.abspath(output_dir)
        self._artifact_root = os.path.join(directory, DEFAULT_ARTIFACTS)
        with _CREATING_STORE:  # alembic's migration context is process-global state
            if not os.path.exists(os.path.join(directory, DEFAULT_DB)):
                from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

                os.makedirs(directory, exist_ok=True)
                # creating the schema here fixes the Default experiment's artifact location
                SqlAlchemyStore(_default_uri(output_dir), self._artifact_root)

    def _experiment_id(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.setting("experiment_name", env="MLFLOW_EXPERIMENT_NAME")
        if not name:
            return "0"  # MLflow's "Default" experiment
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=self._artifact_root)
            except MlflowException:
                # another process created it between our lookup and create
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage == "deleted":
            raise ValueError(
                f"mlflow: experiment {name!r} is deleted on {self.tracking_uri}; restore it "
                "(mlflow experiments restore) or choose another MLFLOW_EXPERIMENT_NAME"
            )
        return experiment.experiment_id

    # -- params and tags -------------------------------------------------------------

    def _tags(self) -> dict[str, str]:
        tags = self.setting("tags", env="MLFLOW_TAGS")
        if tags in (None, ""):
            return {}
        if isinstance(tags, str):
            try:
                tags = json.loads(tags)
            except json.JSONDecodeError as error:
                raise ValueError(f"mlflow: MLFLOW_TAGS is not valid JSON: {error}") from error
        if not isinstance(tags, dict):
            raise ValueError(f"mlflow: tags must be a JSON object, got {type(tags).__name__}")
        return {
            self.sanitize_name(key)[:MAX_KEY_LENGTH].rstrip("/"): str(value)[:MAX_TAG_VALUE_LENGTH]
            for key, value in tags.items()
        }

    def _log_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        entries = [RunTag(key, value) for key, value in tags.items()]
        for begin in range(0, len(entries), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=entries[begin : begin + PARAMS_PER_BATCH])

    def _log_params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = {key: str(value) for key, value in config.items()}
        limit = self.setting("max_log_params", env="MLFLOW_MAX_LOG_PARAMS", cast=int)
        if limit is not None and len(params) > limit:
            logger.warning(
                "mlflow: logging the first %d of %d params (MLFLOW_MAX_LOG_PARAMS)",
                limit,
                len(params),
            )
            params = dict(list(params.items())[:limit])
        # a reopened run already holds its params, and MLflow refuses to change one
        changed = sorted(
            key for key, value in params.items() if self._existing_params.get(key, value) != value
        )
        if changed:
            logger.warning(
                "mlflow: run %s keeps its earlier value of %d param(s) (MLflow params cannot "
                "change): %s",
                self.run_id,
                len(changed),
                ", ".join(changed),
            )
        entries = [
            Param(key, value) for key, value in params.items() if key not in self._existing_params
        ]
        for begin in range(0, len(entries), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=entries[begin : begin + PARAMS_PER_BATCH])
        self._existing_params.update((entry.key, entry.value) for entry in entries)

    def log_params(self, params: dict[str, Any]) -> None:
        self._log_params(params)

    # -- metrics, artifacts, end -----------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None = None):
        self.log_metrics_batch([(metrics, step, epoch)])

    def log_metrics_batch(self, records) -> None:
        # one request for many steps: an MLflow call costs milliseconds of CPU, whatever
        # the number of points in it
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        entries = [
            Metric(name, float(value), timestamp, step)
            for metrics, step, _ in records
            for name, value in metrics.items()
        ]
        for begin in range(0, len(entries), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=entries[begin : begin + METRICS_PER_BATCH])

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        # checkpoints keep their directory name (checkpoint-<step>), the final model is "model"
        target = os.path.basename(os.path.normpath(path)) if kind == "checkpoint" else "model"
        proxy = self._artifact_proxy()
        if proxy is None:
            self.client.log_artifacts(self.run_id, path, artifact_path=target)
        else:
            proxy.log_artifacts(path, target)

    def _artifact_proxy(self):
        """The run's proxied artifact store (``mlflow-artifacts:/...``), resolved against this
        tracker's URI, where mlflow older than 3.7 would resolve it against the process-global
        tracking URI instead of the client's (mlflow#9457, #14931); None otherwise."""
        if self._proxy is None:
            import mlflow
            from packaging.version import Version

            self._proxy = False
            if Version(mlflow.__version__).release < (3, 7):
                uri = self.client.get_run(self.run_id).info.artifact_uri
                if uri.startswith("mlflow-artifacts:"):
                    from mlflow.store.artifact.http_artifact_repo import HttpArtifactRepository
                    from mlflow.store.artifact.mlflow_artifacts_repo import (
                        MlflowArtifactsRepository,
                    )

                    resolved = MlflowArtifactsRepository.resolve_uri(uri, self.tracking_uri)
                    self._proxy = HttpArtifactRepository(resolved)
        return self._proxy or None

    def finish(self, status: str) -> None:
        if self.run_id is not None and self.owns_run:
            _redact_run_url_line(self.client)
            self.client.set_terminated(self.run_id, status=_STATUS[status])


def _redact_run_url_line(client) -> None:
    """MLflow prints "View run NAME at: URL" (and "View experiment at: URL") when a run on a
    tracking server ends, the URL built from the tracking URI with its userinfo, a password
    included. This client prints those lines redacted instead (trackmux.values.redact_text)."""
    import contextlib
    import io

    from trackmux.values import redact_text

    tracking = getattr(client, "_tracking_client", None)
    original = getattr(tracking, "_log_url", None)
    if original is None or getattr(original, "trackmux_redacted", False):
        return

    def log_url(run_id):
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):
                original(run_id)
        finally:
            if printed.getvalue():
                sys.stdout.write(redact_text(printed.getvalue()))

    log_url.trackmux_redacted = True
    tracking._log_url = log_url
