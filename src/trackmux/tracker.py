"""The ``Tracker`` base class: what a tracker plugin author subclasses.

An author overrides four methods, all called off the training loop by a worker thread:

- :meth:`Tracker.start` opens (or resumes) a run with its name and flattened config;
- :meth:`Tracker.log_metrics` records numbers at a global step;
- :meth:`Tracker.log_artifact` uploads a checkpoint or model directory (optional);
- :meth:`Tracker.finish` closes the run with a status: "success", "failed" or "killed".

Everything every integration would otherwise repeat is done once by trackmux before these
calls: the main-process rule, keeping only numbers, namespacing metric names, flattening and
redacting params, the backend's limits on names and values (set the class attributes below),
run identity for resume, error isolation and asynchronous delivery. An author who needs more
(watching a model, drawing a graph) implements any hook of :mod:`trackmux.hookspecs` as a
method decorated with ``@trackmux.hookimpl``; those run on the loop thread, error-isolated.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

logger = logging.getLogger(__name__)

SUCCESS = "success"
FAILED = "failed"
KILLED = "killed"
STATUSES = (SUCCESS, FAILED, KILLED)

ARTIFACT_POLICIES = ("none", "end", "checkpoint", "best", "last")
#: set to 1 for every backend's own console output (banners, INFO lines), not trackmux's line
BACKEND_OUTPUT_ENV = "TRACKMUX_BACKEND_OUTPUT"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@dataclass
class RunInfo:
    """What :meth:`Tracker.start` receives.

    ``config`` is already flat (keys joined with the tracker's ``param_separator``), redacted
    and cut to the tracker's limits. ``resume`` is the identity a previous :meth:`start`
    returned for this run (from this Trainer, or from the checkpoint being resumed), or None
    for a new run. ``kind`` says what opened it: "train", "evaluate" or "predict". ``step`` is
    the trainer's global step at opening: on a resume, points a backend holds past it were
    logged after the checkpoint by the interrupted run (a backend that can purge them should).
    """

    name: str
    config: dict[str, Any]
    output_dir: str
    resume: dict[str, Any] | None = None
    kind: str = "train"
    step: int = 0
    args: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Tracker:
    """Base class of every tracker. Subclass it, set ``name`` and ``requires``, override
    :meth:`start`, :meth:`log_metrics`, :meth:`finish` (and :meth:`log_artifact` if the
    backend stores files)."""

    #: the ``report_to`` name (the entry-point name for a plugin)
    name: ClassVar[str] = ""
    #: backend requirements, checked against installed distributions without importing them,
    #: e.g. ``("tensorboard>=2.10",)``
    requires: ClassVar[tuple[str, ...]] = ()
    #: top-level modules that must be importable (default: derived from ``requires``)
    backend_modules: ClassVar[tuple[str, ...]] = ()
    #: True to be created on every rank, not only the main process
    all_ranks: ClassVar[bool] = False
    #: True to be called inline on the loop thread (cheap local writers only)
    synchronous: ClassVar[bool] = False
    #: where the tracker runs when the run journal is on (docs/plugins/writing.md, "Where a
    #: tracker runs"): ``None``, a plugin chosen by name runs in the delivery process, fed
    #: from the journal, and an instance passed in ``trackers=[...]`` runs in the training
    #: process; ``True``, in the delivery process either way (its class must be importable
    #: and its settings JSON); ``False``, always in the training process, on a worker thread
    #: (it needs the training process: the model, a context of the loop thread, or it feeds
    #: values back into the logs)
    out_of_process: ClassVar[bool | None] = None
    #: joins nested config keys
    param_separator: ClassVar[str] = "/"
    #: backend limits applied by trackmux, with a warning when something is cut
    max_name_length: ClassVar[int | None] = None
    #: most UTF-8 bytes in one "/"-separated part of a name (a backend that writes one file
    #: per metric name: a file system refuses a path component over 255 bytes)
    max_name_part_bytes: ClassVar[int | None] = None
    max_param_value_length: ClassVar[int | None] = None
    #: environment variable that sets this tracker's artifact policy (e.g. HF_MLFLOW_LOG_ARTIFACTS)
    artifacts_env: ClassVar[str | None] = None
    #: seconds the worker waits for more metrics records before one ``log_metrics_batch``
    #: call (0: hand over what is queued at once); the ``batch_window`` setting overrides it
    batch_window: ClassVar[float] = 0.0

    def __init__(self, **settings):
        self.settings = settings
        self.run_info: RunInfo | None = None
        self._worker = None

    def defer(self, method: str, *arguments) -> None:
        """Queue a call of one of this tracker's methods onto its worker, after what is
        already queued. For hooks implemented directly (they run on the loop thread): measure
        there, then ``self.defer("log_metrics", values, state.global_step)``."""
        if self._worker is not None:
            self._worker.submit(method, *arguments)

    # -- configuration -----------------------------------------------------------------

    def setting(self, key: str, default=None, *, env: str | None = None, cast=None):
        """A setting: given in code (``tracker_config`` or the constructor) wins over the
        environment variable ``env``, which wins over ``default``."""
        if key in self.settings and self.settings[key] is not None:
            value = self.settings[key]
        elif env and os.environ.get(env) not in (None, ""):
            value = os.environ[env]
        else:
            return default
        return cast(value) if cast is not None and isinstance(value, str) else value

    def artifact_policy(self, default: str = "none") -> str:
        """none / end / checkpoint / best / last: from the ``artifacts`` setting, then the
        plugin's ``artifacts_env`` (a policy name, or true = "end" / false = "none"), then
        ``TrainingArguments.tracker_artifacts``."""
        value = self.setting("artifacts", env=self.artifacts_env)
        if value is None:
            return default
        if isinstance(value, bool):
            return "end" if value else "none"
        text = str(value).strip().lower()
        if text in ARTIFACT_POLICIES:
            return text
        if text in _TRUE:
            return "end"
        if text in _FALSE:
            return "none"
        from_code = self.settings.get("artifacts") is not None
        source = (
            "setting"
            if from_code or not self.artifacts_env
            else f"environment variable {self.artifacts_env}"
        )
        raise ValueError(
            f"{self.name}: artifacts {source}={value!r} is not a policy; choose one of "
            f"{', '.join(ARTIFACT_POLICIES)} (or true/false)"
        )

    def batch_window_seconds(self) -> float:
        """The batch window in seconds (the ``batch_window`` setting, else the class's)."""
        value = self.setting("batch_window", type(self).batch_window, cast=float)
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"{self.name}: batch_window={value!r} must be a number of seconds >= 0"
            )
        return float(value)

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        """Why this tracker should not be picked by ``report_to="all"`` (say, no workspace
        configured), or None when it can run. Explicitly named trackers still run."""
        return None

    @classmethod
    def mode(cls) -> str:
        """How the tracker would run now: "local", "offline" or "online" (shown by
        ``trackmux plugins``)."""
        return "local"

    def where(self) -> str | None:
        """After :meth:`start`: where the data is and how to look at it, in one line."""
        return None

    def backend_output(self) -> bool:
        """True when the user asked for the backend's own console output: the
        ``backend_output`` setting, else ``TRACKMUX_BACKEND_OUTPUT``. By default a plugin
        keeps its backend quiet and says what matters in one trackmux line (docs/trackers.md,
        "Console output")."""
        value = self.setting("backend_output", env=BACKEND_OUTPUT_ENV)
        if isinstance(value, bool):
            return value
        return str(value).strip().lower() in _TRUE if value is not None else False

    def quiet_backend_loggers(self, *names: str) -> None:
        """Raise the backend's loggers ``names`` to WARNING, unless :meth:`backend_output`:
        their INFO lines (a database created, a banner) are the backend's, not the user's.
        Call it after importing the backend, which may set its own levels on import."""
        if self.backend_output():
            return
        for name in names:
            backend = logging.getLogger(name)
            if backend.getEffectiveLevel() < logging.WARNING:
                backend.setLevel(logging.WARNING)

    # -- names and values -----------------------------------------------------------------

    def sanitize_name(self, name: str) -> str:
        """Make a metric or param name acceptable to the backend (override per backend).

        Map each name the same way every time, and map a name already acceptable to itself.
        Leave lengths to :attr:`max_name_length` and :attr:`max_name_part_bytes`: trackmux
        shortens an over-long name with a stable hash suffix, and gives a name that lands on
        another metric's name a suffix of its own, with a warning (docs/trackers.md)."""
        return name

    # -- what authors implement ----------------------------------------------------------

    #: keys of the identity :meth:`start` returns that hold a file system path. trackmux
    #: stores them relative to :meth:`identity_root` and, on a resume, passes them back
    #: absolute, and only if they resolve inside it (or equal the configured path)
    identity_paths: ClassVar[tuple[str, ...]] = ()
    #: keys of the identity that name the store the run lives in (a tracking URI...): a
    #: resume is honoured only if they equal what :meth:`configured_store` says now
    identity_store: ClassVar[tuple[str, ...]] = ()

    def configured_store(self, run: RunInfo) -> dict[str, Any]:
        """The store (and paths) the current configuration points at, for the keys of
        :attr:`identity_store` and :attr:`identity_paths`; called on the worker thread right
        before :meth:`start` when a run is resumed. A key left out is not compared."""
        return {}

    def identity_root(self, run: RunInfo) -> str:
        """The directory the :attr:`identity_paths` are relative to (default: output_dir)."""
        return run.output_dir

    def _start_vetted(self, run: RunInfo) -> dict[str, Any] | None:
        """What the worker calls: :meth:`start` with a resume identity checked against the
        current configuration (a checkpoint is data, not instructions), its identity
        returned with paths relative to :meth:`identity_root`."""
        if run.resume is not None:
            run = replace(run, resume=vet_identity(self, run))
            self.run_info = run
        identity = self.start(run)
        if isinstance(identity, dict) and self.identity_paths:
            identity = dict(identity)
            root = os.path.realpath(self.identity_root(run))
            for key in self.identity_paths:
                value = identity.get(key)
                if isinstance(value, str) and os.path.isabs(value):
                    resolved = os.path.realpath(value)
                    if _within(resolved, root):
                        identity[key] = os.path.relpath(resolved, root)
        return identity

    def prepare(self, run: RunInfo) -> None:
        """Called on the training loop's thread right before :meth:`start` is queued: the
        place to read thread-local state of the caller (an active run the user opened).
        Keep it cheap: no network, no disk."""

    def start(self, run: RunInfo) -> dict[str, Any] | None:
        """Open a run (or reopen ``run.resume``) and record ``run.config``.

        Return the run's identity (a run id, an experiment key) as a small JSON-able dict:
        trackmux stores it in the checkpoint so a resumed training continues this run.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement start()")

    def log_metrics(self, metrics: dict[str, float], step: int, epoch: float | None = None):
        """Record numeric ``metrics`` (names like ``train/loss``) at the global ``step``."""
        raise NotImplementedError(f"{type(self).__name__} must implement log_metrics()")

    def log_metrics_batch(self, records: list[tuple[dict[str, float], int, float | None]]):
        """Several ``(metrics, step, epoch)`` records at once, oldest first: what queued up
        while the backend was busy, or within :attr:`batch_window`. Override when the
        backend takes many points in one call; by default each goes to :meth:`log_metrics`."""
        for metrics, step, epoch in records:
            self.log_metrics(metrics, step, epoch)

    def log_params(self, params: dict[str, Any]) -> None:
        """Params added after :meth:`start` (``run.log_params`` in a plain loop, a Lightning
        ``log_hyperparams`` after the first metrics), flat and redacted like the config.
        Override when the backend can add params to an open run; by default they are left
        out of this backend with one warning (the jsonl run log keeps them)."""
        if not getattr(self, "_warned_late_params", False):
            self._warned_late_params = True
            logger.warning(
                "%s: cannot add params to a run after it started; %s left out of this "
                "tracker (log them before the first metrics to have them everywhere)",
                self.name,
                ", ".join(sorted(params)) or "none",
            )

    def log_delivery(self, report: dict[str, dict[str, Any]]) -> None:
        """At the end of a run, before :meth:`finish` of a ``synchronous`` tracker: what
        every tracker cost (seconds in its calls, the loop's waits, largest queue depth,
        records delivered). The jsonl run log records it."""

    def log_summary(self, metrics: dict[str, float], step: int) -> None:
        """End-of-training values (``train/train_runtime``, ``train/train_loss``...);
        by default logged like any metrics."""
        self.log_metrics(metrics, step)

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        """Store the directory ``path``: ``kind`` is "checkpoint" or "model". Only called
        when the artifact policy asks for it and the tracker overrides this method."""

    def flush(self) -> None:
        """Make what was logged durable: called at every save and right before
        :meth:`finish`."""

    def finish(self, status: str) -> None:
        """Close the run: ``status`` is "success", "failed" or "killed"."""
        raise NotImplementedError(f"{type(self).__name__} must implement finish()")

    def needs_training_process(self) -> bool:
        """Whether this tracker must run in the training process even where it could run
        out of it (:attr:`out_of_process`): by default when its class says
        ``out_of_process = False`` or it implements hooks itself (they run in the training
        process, on the object that started the run). Override to decide per setting (W&B
        watching the model needs the model)."""
        from .hub import has_direct_hooks

        return type(self).out_of_process is False or has_direct_hooks(self)

    @classmethod
    def stores_artifacts(cls) -> bool:
        return cls.log_artifact is not Tracker.log_artifact

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


# -- identities from checkpoints, run names: data, never instructions ---------------------


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _shown_store(value: Any) -> str:
    """A store value for a message, without the userinfo (credentials) of a URI."""
    return re.sub(r"(?<=://)[^/@\s]*@", "***@", str(value))


def _same_store(saved: Any, configured: Any) -> bool:
    def normal(value):
        return re.sub(r"(?<=://)[^/@\s]*@", "", str(value)).rstrip("/")

    return normal(saved) == normal(configured)


def vet_identity(tracker: Tracker, run: RunInfo) -> dict[str, Any] | None:
    """``run.resume`` if it may be continued under the current configuration, with its
    :attr:`Tracker.identity_paths` made absolute; None (a new run) with a warning naming the
    tracker and what was refused otherwise: a store other than the configured one, a path
    that resolves outside :meth:`Tracker.identity_root` (``..``, absolute, a symlink out)."""
    resume = run.resume
    if not resume:
        return resume
    name = tracker.name or type(tracker).__name__
    if not isinstance(resume, dict):
        logger.warning("tracker %r: ignoring a run identity that is not a dict: %r", name, resume)
        return None
    refused = []
    configured = {}
    if tracker.identity_store or tracker.identity_paths:
        configured = tracker.configured_store(run) or {}
    for key in tracker.identity_store:
        wanted = configured.get(key)
        if key in resume and wanted is not None and not _same_store(resume[key], wanted):
            refused.append(
                f"{key} {_shown_store(resume[key])!r} is not the configured "
                f"{_shown_store(wanted)!r}"
            )
    vetted = dict(resume)
    root = os.path.realpath(tracker.identity_root(run))
    for key in tracker.identity_paths:
        value = resume.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or "\0" in value:
            refused.append(f"{key} {value!r} is not a path")
            continue
        resolved = os.path.realpath(os.path.join(root, value))
        wanted = configured.get(key)
        if _within(resolved, root) or (
            wanted is not None and resolved == os.path.realpath(os.fspath(wanted))
        ):
            vetted[key] = resolved
        else:
            refused.append(f"{key} {value!r} resolves outside {root}")
    if refused:
        logger.warning(
            "tracker %r: opening a new run; the run identity restored from the checkpoint was "
            "refused: %s",
            name,
            "; ".join(refused),
        )
        return None
    return vetted


#: the longest directory name made from a run name (characters, and at most 200 bytes)
MAX_RUN_DIR_NAME = 100
_UNSAFE_IN_NAME = re.compile(r"[\x00-\x1f\x7f/\\]+")


def run_dir_name(name: Any) -> str:
    """The directory name made from a run name: one path component, never ``.``/``..``, so
    it stays inside the directory it is joined to. Path separators and control characters
    (NUL included) become ``_``, leading dots and surrounding spaces are stripped, and the
    name is capped at :data:`MAX_RUN_DIR_NAME` characters; when anything was changed a short
    hash of the full name is appended, so different names stay different directories.
    Backends keep the name itself as the run's display name."""
    name = str(name)
    clean = _UNSAFE_IN_NAME.sub("_", name).strip().lstrip(".").strip()
    limit = MAX_RUN_DIR_NAME
    while len(clean[:limit].encode("utf-8")) > 200:
        limit -= 10
    clean = clean[:limit].rstrip()
    if clean == name:
        return clean
    digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{clean}-{digest}" if clean else f"run-{digest}"
