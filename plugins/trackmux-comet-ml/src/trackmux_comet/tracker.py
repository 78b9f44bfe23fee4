"""The Comet tracker: one Comet experiment per trackmux run.

With credentials (``COMET_API_KEY``, or an ``api_key`` in a Comet config file) the experiment is
an online ``comet_ml.Experiment``; without, it is an ``OfflineExperiment`` whose zip archive
``comet upload`` sends later, and one log line says so. ``COMET_MODE`` (online / offline /
disabled) overrides that choice; an online experiment without credentials is refused before
comet_ml is asked, so it never prompts.

comet_ml is imported in :meth:`CometTracker.start` (on the tracker's worker thread), with its
framework auto-logging switched off: trackmux logs everything explicitly, and comet_ml cannot
patch torch anyway once trackmux has imported it. Offline, its Sentry error reporting is off
too, so an offline run makes no network call.
"""

from __future__ import annotations

import configparser
import logging
import os
import shlex
from contextlib import contextmanager
from typing import Any

from trackmux.tracker import RunInfo, Tracker

# under the "trackmux" logger, which trackmux shows at INFO: the offline notice must be seen
logger = logging.getLogger("trackmux.comet_ml")

ONLINE, OFFLINE, DISABLED = "online", "offline", "disabled"
# Hugging Face v5's COMET_MODE values are comet_ml.start()'s experiment-creation modes; here
# a run is new, or continues the experiment its checkpoint names, so they leave the choice
# between online and offline to the credentials
_AUTO_MODES = {"", "get", "get_or_create", "create"}
_TRUE = {"1", "true", "yes", "on"}

#: constructor switches that keep comet_ml from collecting anything on its own (code, git,
#: stdout, environment, system metrics, CLI args): no hidden cost, nothing trackmux did not send
_QUIET = {
    "log_code": False,
    "log_graph": False,
    "auto_param_logging": False,
    "auto_metric_logging": False,
    "parse_args": False,
    "auto_output_logging": False,
    "log_env_details": False,
    "log_git_metadata": False,
    "log_git_patch": False,
    "log_env_gpu": False,
    "log_env_host": False,
    "log_env_cpu": False,
    "log_env_disk": False,
    # no end-of-experiment summary printed to the console
    "display_summary_level": 0,
}
# accepted by Experiment, ExistingExperiment and OfflineExperiment, not ExistingOfflineExperiment;
# auto_log_co2 would start codecarbon's sampling whenever codecarbon is installed
_QUIET_NEW = {"log_env_network": False, "auto_log_co2": False}


def _config_files() -> list[str]:
    """Comet's ini files, in comet_ml's order: $COMET_CONFIG (a file or a directory),
    ./.comet.config, ~/.comet.config."""
    files = []
    override = os.environ.get("COMET_CONFIG")
    if override:
        override = os.path.expanduser(override)
        files.append(
            os.path.join(override, ".comet.config") if os.path.isdir(override) else override
        )
    files += [os.path.join(".", ".comet.config"), os.path.expanduser("~/.comet.config")]
    return files


def has_credentials() -> bool:
    """Whether comet_ml would find an API key, checked without importing it: COMET_API_KEY, a
    ``COMET_API_KEY=`` line in ./.env, or ``[comet] api_key`` in a config file."""
    if os.environ.get("COMET_API_KEY"):
        return True
    try:
        with open(".env", encoding="utf-8") as env_file:
            for line in env_file:
                key, _, value = line.strip().partition("=")
                if key.strip() == "COMET_API_KEY" and value.strip().strip("'\""):
                    return True
    except OSError:
        pass
    for path in _config_files():
        parser = configparser.ConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError):
            continue
        if parser.get("comet", "api_key", fallback=""):
            return True
    return False


@contextmanager
def _env_defaults(values: dict[str, str]):
    """Set environment variables the user did not set, for the duration of the block."""
    added = [name for name in values if name not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _import_comet(offline: bool):
    """Import comet_ml without its import-time side costs (the first import decides them)."""
    # comet_ml reads these once, while it is imported: auto-logging would install an import
    # hook and warn "import comet_ml before torch" (trackmux has imported torch already);
    # error tracking sets up Sentry, which resolves sentry.io even for an offline experiment
    defaults = {"COMET_DISABLE_AUTO_LOGGING": "1"}
    if offline:
        defaults["COMET_ERROR_TRACKING_ENABLE"] = "false"
    with _env_defaults(defaults):
        import comet_ml
    return comet_ml


class _Quieter(logging.Filter):
    """Drops comet_ml's end-of-run console lines that trackmux's own start line replaces
    (the upload command) or that only alarm ("may take up to 120 seconds": the local
    messages file is written in about a second)."""

    def __init__(self, templates: tuple[str, ...]):
        super().__init__()
        self.templates = templates

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.templates


def _quiet_comet_console() -> None:
    from comet_ml import logging_messages as messages

    templates = tuple(
        getattr(messages, name)
        for name in (
            "OFFLINE_SENDER_WAIT_FOR_FINISH_PROMPT",
            "OFFLINE_SENDER_REMAINING_DATA_ITEMS_TO_WRITE",
            "OFFLINE_EXPERIMENT_SAVE_ARCHIVE_INFO",
            "OFFLINE_EXPERIMENT_END",
        )
        if hasattr(messages, name)
    )
    for handler in logging.getLogger("comet_ml").handlers:
        if not any(isinstance(f, _Quieter) for f in handler.filters):
            handler.addFilter(_Quieter(templates))


class CometTracker(Tracker):
    """Logs a trackmux run to a Comet experiment.

    Settings (``tracker_config={"comet_ml": {...}}``; each falls back to its environment
    variable): ``mode`` (COMET_MODE), ``project_name`` (COMET_PROJECT_NAME), ``workspace``
    (COMET_WORKSPACE), ``offline_directory`` (COMET_OFFLINE_DIRECTORY), ``artifacts``
    (COMET_LOG_ASSETS).
    """

    name = "comet_ml"
    requires = ("comet_ml>=3.43.2",)
    artifacts_env = "COMET_LOG_ASSETS"
    # comet_ml cuts a longer metric name to 100 characters ("... [truncated]"), which would
    # merge two long names into one series: trackmux shortens them first, each with its hash
    max_name_length = 100

    def __init__(self, **settings):
        super().__init__(**settings)
        self.experiment = None
        self.experiment_key: str | None = None
        self.run_mode: str | None = None
        self.offline_directory: str | None = None
        self.archive: str | None = None
        self._where: str | None = None

    # -- configuration ------------------------------------------------------------------

    def run_mode_setting(self) -> str:
        """online / offline / disabled, from the ``mode`` setting or COMET_MODE, else from
        the credentials."""
        value = str(self.setting("mode", env="COMET_MODE", default="")).strip().lower()
        if value in _AUTO_MODES:
            return ONLINE if has_credentials() else OFFLINE
        if value not in (ONLINE, OFFLINE, DISABLED):
            raise ValueError(
                f"comet_ml: mode {value!r} (COMET_MODE) is not one of online, offline, disabled "
                "(or Hugging Face's get, get_or_create, create)"
            )
        return value

    @classmethod
    def mode(cls) -> str:
        try:
            mode = cls().run_mode_setting()
        except ValueError:
            return OFFLINE
        return OFFLINE if mode == DISABLED else mode

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        if os.environ.get("COMET_MODE", "").strip().lower() == DISABLED:
            return "COMET_MODE=disabled is set"
        return None

    def artifact_policy(self, default: str = "none") -> str:
        # Hugging Face's COMET_LOG_ASSETS=true uploads the whole output_dir, every checkpoint
        # in it, at the end: trackmux's "checkpoint" policy stores the same checkpoints, each
        # as soon as it is saved (before save_total_limit can delete it)
        value = self.setting("artifacts", env=self.artifacts_env)
        if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
            return "checkpoint"
        return super().artifact_policy(default)

    def where(self) -> str | None:
        return self._where

    # -- the run ------------------------------------------------------------------------

    identity_paths = ("offline_directory",)

    def configured_store(self, run: RunInfo) -> dict[str, Any]:
        directory = self.setting(
            "offline_directory",
            env="COMET_OFFLINE_DIRECTORY",
            default=os.path.join(run.output_dir, "comet"),
        )
        return {"offline_directory": os.path.abspath(os.path.expanduser(os.fspath(directory)))}

    def start(self, run: RunInfo) -> dict[str, Any] | None:
        mode = self.run_mode_setting()
        self.run_mode = mode
        if mode == DISABLED:
            logger.info("comet_ml: COMET_MODE=disabled, nothing is logged to Comet")
            return None
        if mode == ONLINE and not has_credentials():
            raise ValueError(
                "comet_ml: COMET_MODE=online needs an API key (COMET_API_KEY or `comet login`); "
                "leave COMET_MODE unset to log offline"
            )
        comet_ml = _import_comet(offline=mode == OFFLINE)
        _quiet_comet_console()
        key = (run.resume or {}).get("experiment_key")
        project = self.setting("project_name", env="COMET_PROJECT_NAME")
        workspace = self.setting("workspace", env="COMET_WORKSPACE")
        if mode == ONLINE:
            self.experiment = self._online(comet_ml, key, project, workspace)
        else:
            directory = (run.resume or {}).get("offline_directory") or self.setting(
                "offline_directory",
                env="COMET_OFFLINE_DIRECTORY",
                default=os.path.join(run.output_dir, "comet"),
            )
            self.experiment = self._offline(comet_ml, key, project, workspace, directory)
        self.experiment_key = self.experiment.get_key()
        # an offline experiment otherwise warns that its name is only made at upload
        self.experiment.set_name(run.name)
        self.experiment.log_parameters(run.config)
        if mode == ONLINE:
            self._where = self.experiment.url
        else:
            self._where = f"comet upload {shlex.quote(self.archive)}"
            reason = (
                "COMET_MODE=offline"
                if self.setting("mode", env="COMET_MODE")
                else "no Comet API key (COMET_API_KEY or `comet login`)"
            )
            logger.info(
                "comet_ml: %s, logging offline to %s; upload it after training with: %s",
                reason,
                self.archive,
                self._where,
            )
        identity = {"experiment_key": self.experiment_key}
        if mode == OFFLINE:
            # a resumed training writes its archive beside the first one, which it continues
            identity["offline_directory"] = self.offline_directory
        return identity

    def _online(self, comet_ml, key, project, workspace):
        options = {**_QUIET, **_QUIET_NEW}
        if key:
            return comet_ml.ExistingExperiment(experiment_key=key, **options)
        return comet_ml.Experiment(project_name=project, workspace=workspace, **options)

    def _offline(self, comet_ml, key, project, workspace, directory):
        directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        os.makedirs(directory, exist_ok=True)
        place = {"project_name": project, "workspace": workspace, "offline_directory": directory}
        if key:
            # a new archive (<key>-<suffix>.zip) that `comet upload` appends to the experiment
            # of the first one, which must be uploaded before it
            experiment = comet_ml.ExistingOfflineExperiment(
                experiment_key=key, auto_weight_logging=None, **place, **_QUIET
            )
        else:
            experiment = comet_ml.OfflineExperiment(**place, **_QUIET, **_QUIET_NEW)
        self.offline_directory = experiment.offline_directory
        # the archive is only written by end(); its name is known now (tested with 3.58)
        archive_name = getattr(experiment, "_get_offline_archive_file_name", None)
        name = archive_name() if archive_name else f"{experiment.get_key()}.zip"
        self.archive = os.path.join(self.offline_directory, name)
        return experiment

    def log_params(self, params: dict[str, Any]) -> None:
        self.experiment.log_parameters(params)

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None = None):
        if self.experiment is not None:
            self.experiment.log_metrics(metrics, step=step, epoch=epoch)

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        if self.experiment is not None:
            # file names keep the directory's name: checkpoint-8/model.safetensors
            self.experiment.log_asset_folder(path, step=step, log_file_name=True, recursive=True)

    def finish(self, status: str) -> None:
        if self.experiment is None:
            return
        # Comet has no run status of its own: it goes into the experiment's "Others"
        self.experiment.log_other("status", status)
        self.experiment.end()
        self.experiment = None
