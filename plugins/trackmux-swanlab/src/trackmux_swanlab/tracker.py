"""The SwanLab tracker: one SwanLab run per trackmux session, offline unless asked otherwise.

Where: the ``log_dir`` setting, else ``$SWANLAB_LOG_DIR``, else ``<output_dir>/swanlog``
(SwanLab's own default is ``./swanlog`` in the working directory). Each session is a folder
``run-<time>-<id>`` there. Mode: the ``mode`` setting, else ``$SWANLAB_MODE``, else
"offline" (``swanlab sync`` uploads it later); "local" works too; "online" only with an API
key (``api_key`` / ``$SWANLAB_API_KEY``), since SwanLab would otherwise ask for one.

What, when:

- start: the flattened config as the run's config (params added later join it);
- every log: each metric at the trainer's global step;
- end of training: the summary values (``train/train_runtime``...) at the final step;
- finish: the run's state: success, crashed (a failure) or aborted (an interrupt).

SwanLab holds one run per process, and never prompts here (``interactive=False``); it does
not copy the console into the run, nor sample the machine's load on a thread of its own.
A resumed training continues the same SwanLab run (its id): offline, the resumed session is a
new folder with the same id, and ``swanlab sync`` joins them. swanlab is imported in
:meth:`SwanLabTracker.start`, on the tracker's worker thread.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import threading
from typing import Any

from trackmux.tracker import FAILED, KILLED, SUCCESS, RunInfo, Tracker

LOG_DIR_ENV = "SWANLAB_LOG_DIR"
MODE_ENV = "SWANLAB_MODE"
PROJECT_ENV = "SWANLAB_PROJECT"
API_KEY_ENV = "SWANLAB_API_KEY"
DEFAULT_DIR = "swanlog"
DEFAULT_PROJECT = "trackmux"
#: swanlab's METRIC_KEY_MAX_LENGTH (swanlab.sdk.internal.pkg.constraints)
MAX_KEY_LENGTH = 512
MODES = ("offline", "local", "online", "disabled")
_STATE = {SUCCESS: "success", FAILED: "crashed", KILLED: "aborted"}
_ENVIRONMENT = threading.Lock()
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# what swanlab strips from both ends of a key (fmt.validate_key)
_EDGES = " \t\n\r./"


def _mode(value) -> str:
    mode = "offline" if value in (None, "") else str(value).strip().lower()
    mode = "online" if mode == "cloud" else mode  # swanlab's own alias
    if mode not in MODES:
        raise ValueError(
            f"swanlab: mode {value!r} is not one of {', '.join(MODES)} (SWANLAB_MODE or the "
            "`mode` setting); leave it unset to log offline"
        )
    return mode


class SwanLabTracker(Tracker):
    """Logs a trackmux run to SwanLab.

    Settings (``tracker_config={"swanlab": {...}}``; each falls back to its environment
    variable): ``log_dir`` (SWANLAB_LOG_DIR), ``mode`` (SWANLAB_MODE), ``project``
    (SWANLAB_PROJECT), ``workspace`` (SWANLAB_WORKSPACE), ``api_key`` (SWANLAB_API_KEY).
    """

    name = "swanlab"
    requires = ("swanlab>=0.10,<0.11",)
    max_name_length = MAX_KEY_LENGTH
    identity_paths = ("log_dir",)

    def __init__(self, **settings):
        super().__init__(**settings)
        self.log_dir: str | None = None
        self.run_id: str | None = None
        self.run_mode: str | None = None
        self.project: str | None = None
        self._url: str | None = None
        self._run = None

    @classmethod
    def mode(cls) -> str:
        try:
            mode = _mode(os.environ.get(MODE_ENV))
        except ValueError:
            return "offline"  # listing plugins must not fail; start() reports the bad value
        return "offline" if mode == "disabled" else mode

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        if os.environ.get(MODE_ENV, "").strip().lower() == "disabled":
            return "SWANLAB_MODE=disabled is set"
        return None

    def where(self) -> str | None:
        if self.run_id is None or self.run_mode == "disabled":
            return None
        if self.run_mode == "online":
            return self._url
        # a resumed offline run is one folder per session, all with the run's id
        pieces = os.path.join(shlex.quote(self.log_dir), f"run-*-{self.run_id}")
        return f"swanlab sync {pieces}"

    def sanitize_name(self, name: str) -> str:
        # swanlab drops a key with a control character and strips these ends itself,
        # silently merging "acc/top1/" into "acc/top1": map them here, so trackmux keeps
        # the two apart and says so
        return _CONTROL.sub("_", name).strip(_EDGES) or "_"

    # -- the run ------------------------------------------------------------------------

    def configured_store(self, run: RunInfo) -> dict[str, Any]:
        return {"log_dir": self._configured_dir(run)}

    def _configured_dir(self, run: RunInfo) -> str:
        directory = self.setting(
            "log_dir", env=LOG_DIR_ENV, default=os.path.join(run.output_dir, DEFAULT_DIR)
        )
        return os.path.abspath(os.path.expanduser(os.fspath(directory)))

    def start(self, run: RunInfo) -> dict[str, Any]:
        import swanlab

        mode = _mode(self.setting("mode", env=MODE_ENV))
        api_key = self.setting("api_key", env=API_KEY_ENV)
        if mode == "online" and not api_key:
            # swanlab would ask for a key on a terminal, or fail later without one
            raise ValueError(
                "swanlab: mode online needs an API key: set SWANLAB_API_KEY (or the "
                "`api_key` setting), or leave SWANLAB_MODE unset to log offline"
            )
        if swanlab.has_run():
            raise RuntimeError(
                "swanlab: a SwanLab run is already open in this process (swanlab.init() "
                "elsewhere, or another Trainer); SwanLab holds one run per process: finish "
                "it before training"
            )
        resume = run.resume or {}
        self.log_dir = resume.get("log_dir") or self._configured_dir(run)
        self.project = str(
            resume.get("project") or self.setting("project", DEFAULT_PROJECT, env=PROJECT_ENV)
        )
        os.makedirs(self.log_dir, exist_ok=True)
        with _without_project_variable():
            self._run = self._init(swanlab, run, mode, resume, api_key)
        self.run_mode, self.run_id = mode, self._run.id
        if mode == "online":
            self._url = self._run.url
        return {"run_id": self.run_id, "project": self.project, "log_dir": self.log_dir}

    def _init(self, swanlab, run: RunInfo, mode: str, resume: dict, api_key):
        return swanlab.init(
            mode=mode,
            log_dir=self.log_dir,
            project=self.project,
            workspace=self.setting("workspace", env="SWANLAB_WORKSPACE"),
            name=run.name,
            id=resume.get("run_id"),
            resume="allow" if resume.get("run_id") else None,
            config=run.config,
            settings=self._settings(swanlab, api_key),
        )

    @staticmethod
    def _settings(swanlab, api_key):
        settings = swanlab.Settings
        return settings(
            # never a prompt: without what it needs, swanlab fails instead of asking
            interactive=False,
            # the console is trackmux's: not copied into the run, progress bar and all
            terminal=settings.Terminal(proxy_type="none"),
            # no sampling thread in the training process
            probe=settings.Probe(monitor=False),
            **({"api_key": api_key} if api_key else {}),
        )

    def log_metrics(self, metrics, step, epoch=None):
        self._run.log(dict(metrics), step=step)

    def log_params(self, params: dict[str, Any]) -> None:
        # swanlab's run config is live: an update is written to files/config.yaml at once
        self._run.config.update(params)

    def finish(self, status: str) -> None:
        if self._run is None:
            return
        state = _STATE[status]
        error = "training failed (see the traceback in the training's output)"
        try:
            self._run.finish(state=state, error=error if state == "crashed" else None)
        finally:
            self._run = None


@contextlib.contextmanager
def _without_project_variable():
    """SwanLab 0.10 reads every SWANLAB_<FIELD> variable into its settings, and its field
    ``project`` is a structure: the plain name in SWANLAB_PROJECT (Hugging Face's variable,
    read above) makes ``swanlab.Settings()`` fail. It is set aside while the run opens."""
    with _ENVIRONMENT:
        saved = os.environ.pop(PROJECT_ENV, None)
        try:
            yield
        finally:
            if saved is not None:
                os.environ[PROJECT_ENV] = saved
