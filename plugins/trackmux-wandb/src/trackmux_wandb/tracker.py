"""The Weights & Biases tracker: one W&B run per trackmux session.

Online only when credentials exist (``WANDB_API_KEY`` or a ``wandb login`` entry in the
netrc file); otherwise the run is written offline under ``<dir>/wandb/offline-run-*`` and
one log line gives the ``wandb sync`` command that uploads it later. ``WANDB_MODE``
(online / offline / disabled) overrides that choice. wandb never gets the chance to prompt:
an online run without credentials is refused before ``wandb.init``.

Every metric row carries ``train/global_step`` (the trainer's step), declared as the step
metric of all keys, and ``run.log`` is never given ``step=``: wandb's own step only ever
increases, which training and evaluation rows logged at the same trainer step, or a resumed
run, would break.

wandb is imported in :meth:`WandbTracker.start`, on the tracker's worker thread.
"""

from __future__ import annotations

import logging
import netrc
import os
import shlex
import sys
import threading
from typing import Any
from urllib.parse import urlparse

from trackmux import hookimpl
from trackmux.tracker import FAILED, KILLED, SUCCESS, RunInfo, Tracker

# under the "trackmux" logger, which trackmux shows at INFO: the offline notice must be seen
logger = logging.getLogger("trackmux.wandb")

STEP_METRIC = "train/global_step"
DEFAULT_PROJECT = "trackmux"
DEFAULT_HOST = "https://api.wandb.ai"
WATCH_CHOICES = ("gradients", "parameters", "all")
#: exit codes W&B records; it shows any non-zero one as failed. 130 is the shell's Ctrl-C code
EXIT_CODES = {SUCCESS: 0, FAILED: 1, KILLED: 130}
_MODES = {"online": "online", "run": "online", "shared": "online", "offline": "offline"}
_MODES.update({"dryrun": "offline", "disabled": "disabled"})
_TRUE = {"1", "true", "yes", "on"}


def _tags(value) -> list[str] | None:
    if value in (None, ""):
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(item).strip() for item in items if str(item).strip()] or None


def has_credentials() -> bool:
    """True when wandb could log in without asking: an API key in the environment, or the
    netrc entry ``wandb login`` writes for the W&B host (never read with wandb's help, so
    that asking costs no import)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname
    path = os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    try:
        entry = netrc.netrc(path).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


class WandbTracker(Tracker):
    """Logs a trackmux run to Weights & Biases.

    Settings (``tracker_config={"wandb": {...}}``; each falls back to its environment
    variable): ``project`` (WANDB_PROJECT), ``entity`` (WANDB_ENTITY), ``name`` (WANDB_NAME),
    ``group`` (WANDB_RUN_GROUP), ``tags`` (WANDB_TAGS, comma-separated), ``mode``
    (WANDB_MODE), ``dir`` (WANDB_DIR), ``watch`` (WANDB_WATCH), ``log_freq``
    (WANDB_LOG_FREQ), ``artifacts`` (WANDB_LOG_MODEL).
    """

    name = "wandb"
    requires = ("wandb>=0.31",)
    # W&B shows nested config keys joined with ".": flat keys read the same in its tables
    param_separator = "."
    artifacts_env = "WANDB_LOG_MODEL"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.run = None
        self.owns_run = False
        self.run_mode: str | None = None
        self.directory: str | None = None
        self._user_run = None
        self._watched = None
        self._ready = threading.Event()

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def _mode_from(cls, value) -> str:
        if value in (None, ""):
            return "online" if has_credentials() else "offline"
        mode = _MODES.get(str(value).strip().lower())
        if mode is None:
            raise ValueError(f"wandb: mode {value!r} is not one of online, offline, disabled")
        return mode

    @classmethod
    def mode(cls) -> str:
        try:
            mode = cls._mode_from(os.environ.get("WANDB_MODE"))
        except ValueError:
            return "offline"  # listing plugins must not fail; start() reports the bad value
        return "offline" if mode == "disabled" else mode

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        if os.environ.get("WANDB_MODE", "").strip().lower() == "disabled":
            return "WANDB_MODE=disabled is set"
        # Hugging Face v4's switch, still set in many job scripts
        if os.environ.get("WANDB_DISABLED", "").strip().lower() in _TRUE:
            return "WANDB_DISABLED is set"
        return None

    def where(self) -> str | None:
        if self.run is None or self.run_mode == "disabled":
            return None
        if self.run_mode == "offline":
            return self._sync_command()
        return self.run.url

    def _sync_command(self) -> str:
        # a resumed offline run is one directory per piece; wandb sync uploads them in order
        runs = os.path.join(shlex.quote(self.directory), "wandb", f"offline-run-*-{self.run.id}")
        return f"wandb sync {runs}"

    def prepare(self, run: RunInfo) -> None:
        self._ready.clear()
        # a run the user started with wandb.init() before training is logged into, as Hugging
        # Face does; any other run would be finished by ours, which becomes ``wandb.run`` (the
        # model watcher logs through it). wandb is not imported for this: a user with a run
        # imported it
        wandb = sys.modules.get("wandb")
        self._user_run = getattr(wandb, "run", None) if wandb is not None else None

    # -- the run ------------------------------------------------------------------------

    def start(self, run: RunInfo) -> dict[str, Any]:
        try:
            return self._start(run)
        finally:
            self._ready.set()  # on_train_begin waits for this, successful or not

    def _start(self, run: RunInfo) -> dict[str, Any]:
        import wandb

        resume = run.resume or {}
        if self._user_run is not None:
            self.run, self.owns_run = self._user_run, False
            self.run_mode = "offline" if self.run.offline else "online"
            self.directory = os.path.dirname(os.path.dirname(self.run.settings.sync_dir))
            self.run.config.update(run.config, allow_val_change=True)
        else:
            self._init(wandb, run, resume)
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC, step_sync=True)
        return {"run_id": self.run.id, "project": self.run.project, "entity": self.run.entity}

    def _init(self, wandb, run: RunInfo, resume: dict) -> None:
        mode = self._mode_from(self.setting("mode", env="WANDB_MODE"))
        if mode == "online" and not has_credentials():
            # wandb would ask for an API key on a terminal: refuse before it can
            raise ValueError(
                "wandb: WANDB_MODE=online but no credentials: set WANDB_API_KEY, run "
                "`wandb login`, or leave WANDB_MODE unset to log offline"
            )
        self.run_mode = mode
        directory = self.setting("dir", env="WANDB_DIR", default=run.output_dir)
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        os.makedirs(self.directory, exist_ok=True)
        close_timeout = getattr(run.args, "tracker_close_timeout", None)
        loud = self.backend_output()
        settings = wandb.Settings(
            # the one-line notice below replaces wandb's banner and its `wandb online` /
            # `wandb sync` advice (silent: none of wandb's own lines), unless asked for
            quiet=not loud,
            silent=not loud,
            # beyond trackmux's close timeout the worker is abandoned anyway; wandb then
            # marks the run crashed instead of uploading on past the end of training
            finish_timeout=float(close_timeout or 0.0),
        )
        self.run = wandb.init(
            mode=mode,
            dir=self.directory,
            project=resume.get("project")
            or self.setting("project", DEFAULT_PROJECT, env="WANDB_PROJECT"),
            entity=resume.get("entity") or self.setting("entity", env="WANDB_ENTITY"),
            name=self.setting("name", env="WANDB_NAME", default=run.name),
            group=self.setting("group", env="WANDB_RUN_GROUP"),
            tags=_tags(self.setting("tags", env="WANDB_TAGS")),
            config=run.config,
            allow_val_change=True,
            id=resume.get("run_id"),
            resume="allow" if resume.get("run_id") else None,
            settings=settings,
        )
        self.owns_run = True
        if mode == "offline":
            reason = (
                "WANDB_MODE=offline"
                if self.setting("mode", env="WANDB_MODE")
                else ("no W&B credentials (WANDB_API_KEY or `wandb login`)")
            )
            logger.info(
                "wandb: %s, logging offline; upload later with: %s", reason, self._sync_command()
            )

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None = None):
        self.run.log({**metrics, STEP_METRIC: step})

    def log_params(self, params: dict[str, Any]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        # single end-of-training values (runtime, throughput, mean loss) are not curves
        self.run.summary.update(metrics)

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        import wandb

        # one artifact per run, a version per upload, as Hugging Face's WandbCallback names it
        artifact = wandb.Artifact(
            name=f"model-{self.run.id}", type="model", metadata={"global_step": step}
        )
        artifact.add_dir(path)
        alias = f"checkpoint_global_step_{step}" if kind == "checkpoint" else "final_model"
        self.run.log_artifact(artifact, aliases=[alias])

    def finish(self, status: str) -> None:
        if self.run is None:
            return
        if self._watched is not None:
            self.run.unwatch(self._watched)
            self._watched = None
        if self.owns_run:
            self.run.finish(exit_code=EXIT_CODES[status])

    # -- hooks (loop thread) ---------------------------------------------------------------

    def _watch(self) -> str:
        return str(self.setting("watch", "false", env="WANDB_WATCH")).strip().lower()

    def needs_training_process(self) -> bool:
        # watching the model needs the model; otherwise the hook below has nothing to do
        return self._watch() not in ("false", "none", "")

    @hookimpl
    def on_train_begin(self, args, state, model):
        watch = self._watch()
        if watch in ("false", "none", ""):
            return
        if watch not in WATCH_CHOICES:
            raise ValueError(
                f"wandb: WANDB_WATCH={watch!r} is not one of gradients, parameters, all, false"
            )
        # start() runs on the worker and may still be under way
        if not self._ready.wait(args.tracker_close_timeout) or self.run is None:
            logger.warning("wandb: the run did not start in time; the model is not watched")
            return
        # Hugging Face's default frequency: not more often than every 100 backward passes
        default = max(100, int(state.logging_steps or 0))
        log_freq = self.setting("log_freq", default, env="WANDB_LOG_FREQ", cast=int)
        self.run.watch(model, log=watch, log_freq=log_freq)
        self._watched = model
