"""The DagsHub tracker: the MLflow tracker pointed at a repository's DagsHub-hosted MLflow.

DagsHub serves one MLflow tracking server per repository, at ``<host>/<owner>/<name>.mlflow``,
behind HTTP basic auth (user name and token). This tracker builds that URI itself and leaves
everything else to :class:`~trackmux_mlflow.tracker.MlflowTracker`. It never uses the dagshub
client: ``dagshub.init`` always calls DagsHub's REST API and, without a token, starts an
interactive OAuth login, which a training job must never wait on.
"""

from __future__ import annotations

import os
from urllib.parse import quote, unquote, urlparse

from trackmux.tracker import RunInfo
from trackmux_mlflow.tracker import MlflowTracker

TOKEN_ENV = "DAGSHUB_USER_TOKEN"
REPO_ENV = "DAGSHUB_REPO"
HOST_ENV = "DAGSHUB_CLIENT_HOST"  # the dagshub client's own name for it
DEFAULT_HOST = "https://dagshub.com"
DEFAULT_BRANCH = "main"
DEFAULT_MODEL_NAME = "model"
#: MLflow's own tag for the git branch of a run's source, which DagsHub's UI shows
BRANCH_TAG = "mlflow.source.git.branch"
#: mlflow reads these for basic auth, from the process environment, at every request
AUTH_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_NO_REPO = (
    "dagshub: no repository: set DAGSHUB_REPO=<owner>/<name> (or "
    "tracker_config={{'dagshub': {{'repo': '<owner>/<name>'}}}}, or Hugging Face's "
    "MLFLOW_TRACKING_URI=https://dagshub.com/<owner>/<name>.mlflow){detail}"
)


class DagsHubConfigError(ValueError):
    """The tracker cannot run as configured; raised before any training."""


def tracking_uri(host: str, owner: str, name: str) -> str:
    """``<host>/<owner>/<name>.mlflow``, joined as a URL: never with ``os.path`` or
    ``os.sep``, which put backslashes in it on Windows (transformers #42687)."""
    return "/".join((host.rstrip("/"), quote(owner, safe=""), quote(name, safe="") + ".mlflow"))


def split_repo(repo: str) -> tuple[str, str]:
    """``"owner/name"`` → ``("owner", "name")``; a clear error for anything else."""
    parts = str(repo).strip().strip("/").split("/")
    if len(parts) != 2 or not all(part.strip() for part in parts):
        raise DagsHubConfigError(_NO_REPO.format(detail=f"; {repo!r} is not <owner>/<name>"))
    return parts[0].strip(), parts[1].strip()


def repo_from_tracking_uri(uri: str | None) -> tuple[str, str, str] | None:
    """(host, owner, name) of a DagsHub tracking URI ``<host>/<owner>/<name>.mlflow``, the
    way Hugging Face's DagsHubCallback is configured; None for any other URI."""
    if not uri:
        return None
    parsed = urlparse(uri)
    parts = [part for part in parsed.path.split("/") if part]
    if parsed.scheme not in ("http", "https") or len(parts) != 2:
        return None
    owner, name = parts
    if not name.endswith(".mlflow") or name == ".mlflow":
        return None
    return f"{parsed.scheme}://{parsed.netloc}", unquote(owner), unquote(name[: -len(".mlflow")])


class DagsHubTracker(MlflowTracker):
    """Logs a trackmux run to the MLflow server of a DagsHub repository.

    Settings (``tracker_config={"dagshub": {...}}``; each falls back to its environment
    variable): ``repo`` ("owner/name", DAGSHUB_REPO, else parsed from a DagsHub
    MLFLOW_TRACKING_URI), ``host`` (DAGSHUB_CLIENT_HOST), ``branch`` (DAGSHUB_BRANCH, then
    Hugging Face's BRANCH), ``username`` (DAGSHUB_USERNAME, default the owner),
    ``model_name`` (HF_DAGSHUB_MODEL_NAME), ``artifacts`` (HF_DAGSHUB_LOG_ARTIFACTS), and the
    MLflow tracker's ``experiment_name``, ``run_id``, ``nested``, ``tags``, ``max_log_params``.
    The token comes only from DAGSHUB_USER_TOKEN.
    """

    name = "dagshub"
    artifacts_env = "HF_DAGSHUB_LOG_ARTIFACTS"

    def __init__(self, **settings):
        if settings.get("tracking_uri") is not None:
            raise DagsHubConfigError(
                "dagshub: the tracking URI is built from the repository; set 'repo' (and "
                "'host') instead of 'tracking_uri'"
            )
        super().__init__(**settings)
        self.host, self.owner, self.repo_name = self._repository()
        # the URI as a setting wins over MLFLOW_TRACKING_URI in MlflowTracker.start()
        self.settings["tracking_uri"] = tracking_uri(self.host, self.owner, self.repo_name)
        self.branch = str(
            self.setting("branch", env="DAGSHUB_BRANCH")
            or os.environ.get("BRANCH")
            or DEFAULT_BRANCH
        )
        self.username = str(self.setting("username", env="DAGSHUB_USERNAME") or self.owner)
        self.model_name = self.sanitize_name(
            self.setting("model_name", DEFAULT_MODEL_NAME, env="HF_DAGSHUB_MODEL_NAME")
        )
        self._saved_auth: dict[str, str | None] | None = None
        # the refusal happens here, when report_to is resolved at the start of train(), so a
        # job without a token stops before its first step even when trackers are not strict
        self._token()

    # -- configuration ------------------------------------------------------------------

    def _repository(self) -> tuple[str, str, str]:
        repo = self.setting("repo", env=REPO_ENV)
        if repo:
            owner, name = split_repo(repo)
            host = self.setting("host", DEFAULT_HOST, env=HOST_ENV)
            return str(host).strip().rstrip("/"), owner, name
        from_uri = repo_from_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))
        if from_uri is None:
            raise DagsHubConfigError(_NO_REPO.format(detail=""))
        return from_uri

    def _token(self) -> str:
        token = os.environ.get(TOKEN_ENV, "").strip()
        if not token:
            raise DagsHubConfigError(
                f"dagshub: {TOKEN_ENV} is not set, so trackmux cannot log to {self.host}/"
                f"{self.owner}/{self.repo_name} (and never starts DagsHub's interactive "
                f"login): create a token at {self.host}/user/settings/tokens and export it as "
                f"{TOKEN_ENV}, or leave 'dagshub' out of report_to"
            )
        return token

    @classmethod
    def mode(cls) -> str:
        return "online"

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        # report_to="all" sees only the environment; a repo given in tracker_config needs
        # report_to to name "dagshub"
        if not os.environ.get(TOKEN_ENV, "").strip():
            return f"{TOKEN_ENV} is not set"
        if not os.environ.get(REPO_ENV, "").strip() and not repo_from_tracking_uri(
            os.environ.get("MLFLOW_TRACKING_URI")
        ):
            return f"no repository ({REPO_ENV}=<owner>/<name>)"
        return None

    def _tags(self) -> dict[str, str]:
        tags = super()._tags()
        tags.setdefault(BRANCH_TAG, self.branch)
        return tags

    # -- the run ------------------------------------------------------------------------

    def start(self, run: RunInfo):
        self._use_credentials(self.username, self._token())
        try:
            return super().start(run)
        except BaseException:
            self._restore_credentials()
            raise

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        if kind != "model":
            super().log_artifact(path, kind, step)
            return
        # HF_DAGSHUB_MODEL_NAME names the final model's artifact directory
        proxy = self._artifact_proxy()
        if proxy is None:
            self.client.log_artifacts(self.run_id, path, artifact_path=self.model_name)
        else:
            proxy.log_artifacts(path, self.model_name)

    def finish(self, status: str) -> None:
        try:
            super().finish(status)
        finally:
            self._restore_credentials()

    def _use_credentials(self, username: str, token: str) -> None:
        """Basic auth for DagsHub's MLflow, the way ``dagshub.init`` sets it: mlflow reads it
        only from the process environment, so it is set for the run and put back after."""
        if self._saved_auth is None:
            self._saved_auth = {name: os.environ.get(name) for name in AUTH_ENV}
        os.environ["MLFLOW_TRACKING_USERNAME"] = username
        os.environ["MLFLOW_TRACKING_PASSWORD"] = token

    def _restore_credentials(self) -> None:
        saved, self._saved_auth = self._saved_auth, None
        for name, value in (saved or {}).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
