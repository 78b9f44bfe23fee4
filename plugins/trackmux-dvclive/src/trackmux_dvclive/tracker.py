"""The DVCLive tracker: a ``dvclive.Live`` directory that DVC's experiment tools read.

Where: the ``dir`` setting, else ``<output_dir>/dvclive``. DVCLive's ``dvc.yaml`` (which tells
``dvc plots`` / ``dvc exp show`` what the directory holds) goes beside that directory, never
into the working directory, unless the ``dvcyaml`` setting says otherwise.

What, when:

- start: the flattened config with ``log_params`` (``params.yaml``), ``status: running`` in
  ``metrics.json``;
- every log: one row per metric in ``plots/metrics/<name>.tsv`` at the trainer's global
  step (``live.step`` is set before each batch, ``next_step()`` is never called), and
  ``metrics.json`` rewritten with the latest values at most once a second and at each save;
- end of training: the summary values (``train/train_runtime``...) in ``metrics.json`` only:
  one number each is not a plot;
- checkpoints or the final model, as the artifact policy asks: ``live.log_artifact(path,
  type="model")``, which ``dvc add``-s them (a DVC repository is needed);
- finish: the status ("success", "failed", "killed") as ``status`` in ``metrics.json``, then
  ``live.end()``.

A resumed run reopens the same directory with ``resume=True``; on a resumed training the rows
the interrupted run logged after its checkpoint are dropped first, so each step appears once.
"""

from __future__ import annotations

import csv
import logging
import os
import shlex
import time

from trackmux.tracker import RunInfo, Tracker

logger = logging.getLogger(__name__)

LOG_MODEL_ENV = "HF_DVCLIVE_LOG_MODEL"
DEFAULT_DIR = "dvclive"
STATUS_KEY = "status"
RUNNING = "running"
_STUDIO_TOKEN_ENVS = ("DVC_STUDIO_TOKEN", "STUDIO_TOKEN")
_STUDIO_OFFLINE_ENV = "DVC_STUDIO_OFFLINE"
#: seconds between two rewrites of metrics.json while training (it is also rewritten at each
#: save and at the end): truncating and rewriting it took 1-4 ms on ext4, 7-30x a log's rows
SUMMARY_INTERVAL = 1.0
_TRUE = {"1", "true", "yes", "y", "on"}
_OFF = {"0", "false", "no", "off", "none", ""}


class DVCLiveTracker(Tracker):
    name = "dvclive"
    requires = ("dvclive>=3.0",)
    pip_name = "trackmux-dvclive"
    artifacts_env = LOG_MODEL_ENV

    # records gathered for half a second are written in one go
    batch_window = 0.5
    # one file per metric, plots/metrics/<name>.tsv: each "/" part of a name is a path
    # component, which a file system caps at 255 bytes (".tsv" and a margin kept free)
    max_name_part_bytes = 240

    def __init__(self, **settings):
        super().__init__(**settings)
        self.live = None
        self.directory: str | None = None
        self.dvc_file: str | None = None
        self._artifacts_possible = False
        self._names: dict[str, str] = {}
        self._summary_written = 0.0

    @classmethod
    def mode(cls) -> str:
        # with a Studio token dvclive also posts every update to DVC Studio
        token = any(os.environ.get(name) for name in _STUDIO_TOKEN_ENVS)
        offline = os.environ.get(_STUDIO_OFFLINE_ENV, "").strip().lower() in _TRUE
        return "online" if token and not offline else "local"

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        # Live() in a Git work tree without DVC runs `dvc init` at its root: a side effect
        # report_to="all" must not cause. Named explicitly, dvclive still runs.
        git_root = _git_root_without_dvc(os.getcwd())
        if git_root is None:
            return None
        # one short clause in the start-of-training line; the fixes are in the plugin's docs
        return f"{git_root} is a Git repository without DVC: dvclive would run `dvc init` there"

    def artifact_policy(self, default: str = "none") -> str:
        # Hugging Face's HF_DVCLIVE_LOG_MODEL=all logs the output directory at every save
        value = self.setting("artifacts", env=self.artifacts_env)
        if isinstance(value, str) and value.strip().lower() == "all":
            return "checkpoint"
        return super().artifact_policy(default)

    def sanitize_name(self, name: str) -> str:
        # a name is a path under plots/metrics: keep it there
        parts = [part for part in name.replace("\\", "/").split("/") if part not in {"", ".", ".."}]
        return "/".join(parts) or "_"

    identity_paths = ("dir",)

    def configured_store(self, run: RunInfo):
        return {"dir": self.setting("dir", default=os.path.join(run.output_dir, DEFAULT_DIR))}

    def start(self, run: RunInfo):
        # dvclive imports DVC: only here, never at discovery
        from dvclive import Live

        resume = run.resume or {}
        directory = resume.get("dir") or self.setting(
            "dir", default=os.path.join(run.output_dir, DEFAULT_DIR)
        )
        self.directory = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        self.dvc_file = self._dvc_file()
        live = Live(
            dir=self.directory,
            resume=bool(run.resume),
            report=None,
            save_dvc_exp=self.setting("save_dvc_exp", default=False, cast=_flag),
            dvcyaml=self.dvc_file or False,
        )
        if run.resume and run.kind == "train":
            _drop_points_after(live.plots_dir, run.step)
        live.log_params(run.config)
        live.summary[STATUS_KEY] = RUNNING
        live.make_summary()
        self.live = live
        self._write_dvc_file()
        policy = self.artifact_policy(getattr(run.args, "tracker_artifacts", "none"))
        self._artifacts_possible = policy != "none" and _inside_dvc_repo(policy)
        return {"dir": self.directory}

    def log_metrics(self, metrics, step, epoch=None):
        self._log(metrics, step, plot=True)

    def log_params(self, params):
        self.live.log_params(params)

    def log_summary(self, metrics, step):
        self._log(metrics, step, plot=False)

    def log_artifact(self, path, kind, step):
        if not self._artifacts_possible:
            return
        self.live.log_artifact(
            os.fspath(path),
            type="model",
            meta={"kind": kind, "step": step},
            copy=self.setting("copy_artifacts", default=False, cast=_flag),
        )
        self._write_dvc_file()

    def flush(self):
        if self.live is not None:
            self.live.make_summary()
            self._write_dvc_file()

    def finish(self, status):
        if self.live is None:
            return
        self.live.summary[STATUS_KEY] = status
        # end() moves live.step back to the step metrics.json last recorded: bring it up to date
        self.live.make_summary()
        self.live.end()
        self.live = None

    def where(self):
        if self.directory is None:
            return None
        if self.dvc_file:
            folder = shlex.quote(os.path.dirname(self.dvc_file))
            return f"{self.directory} (cd {folder} && dvc plots show)"
        plots = shlex.quote(os.path.join(self.directory, "plots", "metrics"))
        return f"{self.directory} (dvc plots show {plots} -x step)"

    # -- helpers ----------------------------------------------------------------------------

    def _log(self, metrics, step, plot):
        live = self.live
        # dvclive's documented manual-step pattern: its step is the global step, always
        live.step = step
        names = self._names
        for name, value in metrics.items():
            clean = names.get(name)
            if clean is None:
                clean = names[name] = self.sanitize_name(name)
            live.log_metric(clean, value, plot=plot)
        now = time.monotonic()
        if now - self._summary_written >= SUMMARY_INTERVAL:
            live.make_summary()
            self._summary_written = now

    def _dvc_file(self) -> str | None:
        value = self.setting("dvcyaml", default=True)
        if value is False or (isinstance(value, str) and value.strip().lower() in _OFF):
            return None
        if value is True:
            # beside the directory: dvclive's own default layout, away from the working dir.
            # Inside the directory dvclive repeats its entries on every update.
            return os.path.join(os.path.dirname(self.directory), "dvc.yaml")
        return os.path.abspath(os.path.expanduser(os.fspath(value)))

    def _write_dvc_file(self) -> None:
        # make_dvcyaml() writes ./dvc.yaml when Live has no dvc.yaml: call it only with one
        if self.dvc_file:
            self.live.make_dvcyaml()


def _flag(value: str) -> bool:
    return value.strip().lower() in _TRUE


def _git_root_without_dvc(folder: str) -> str | None:
    """The Git work tree ``folder`` is in, when no DVC repository holds ``folder``: where
    dvclive would initialise one. Searched upwards like DVC (which stops at a mount point)."""
    folder = os.path.abspath(folder)
    git_root = None
    dvc_searched = False
    while True:
        if not dvc_searched and os.path.isdir(os.path.join(folder, ".dvc")):
            return None
        if git_root is None and os.path.exists(os.path.join(folder, ".git")):
            git_root = folder
        dvc_searched = dvc_searched or os.path.ismount(folder)
        parent = os.path.dirname(folder)
        if parent == folder:
            return git_root
        folder = parent


def _inside_dvc_repo(policy: str) -> bool:
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        Repo.find_root()
    except NotDvcRepoError:
        logger.warning(
            "dvclive: artifacts=%r needs a DVC repository, and %s is not inside one: no "
            "model or checkpoint will be stored (run `dvc init`, or train inside a Git "
            "repository, where dvclive runs it)",
            policy,
            os.getcwd(),
        )
        return False
    return True


def _drop_points_after(plots_dir: str, step: int) -> None:
    """Rewrite each metric history under ``plots_dir`` without its rows past ``step``: the
    interrupted run logged them after the checkpoint the training resumes from."""
    for folder, _, files in os.walk(os.path.join(plots_dir, "metrics")):
        for file in files:
            if file.endswith(".tsv"):
                _truncate_history(os.path.join(folder, file), step)


def _truncate_history(path: str, step: int) -> None:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    if not rows or "step" not in rows[0]:
        return
    header, body = rows[0], rows[1:]
    column = header.index("step")
    # a row cut short by the crash is dropped too
    kept = [row for row in body if len(row) == len(header) and _at_most(row[column], step)]
    if len(kept) == len(body):
        return
    partial = f"{path}.partial"
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter="\t", lineterminator=os.linesep).writerows([header, *kept])
    os.replace(partial, path)


def _at_most(text: str, step: int) -> bool:
    try:
        return int(text) <= step
    except ValueError:
        return False
