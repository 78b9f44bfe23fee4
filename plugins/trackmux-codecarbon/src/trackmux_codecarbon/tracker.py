"""The ``codecarbon`` tracker: measures the energy and emissions of training with codecarbon.

CodeCarbon is a metric *source*, not a sink: it stores no params or metrics of the run. Its
``OfflineEmissionsTracker`` (no network, never a geo-IP lookup) starts with the training run,
writes a row of ``emissions.csv`` at every checkpoint save and a last one when it stops. When
training completes, its final figures go into the train summary that ``on_log`` carries, so
every other tracker (the jsonl run log included) records them as ``codecarbon/<figure>``.

Settings (``tracker_config={"codecarbon": {...}}``) are ``OfflineEmissionsTracker`` keyword
arguments and win over codecarbon's own configuration (``CODECARBON_*`` environment
variables, ``.codecarbon.config`` files), which wins over trackmux's defaults: output under
``<output_dir>/codecarbon``, ``log_level="error"``, the run name as ``experiment_name``.
"""

from __future__ import annotations

import csv
import logging
import os
import threading

from trackmux import hookimpl
from trackmux.tracker import RunInfo, Tracker

logger = logging.getLogger("trackmux.codecarbon")

#: what the other trackers receive, as ``codecarbon/<name>``: kg CO2eq, kWh (total, then per
#: device) and seconds; the names are codecarbon's own emissions.csv columns
FIGURES = ("emissions", "energy_consumed", "cpu_energy", "gpu_energy", "ram_energy", "duration")
PREFIX = "codecarbon/"
WHY = "; codecarbon logs the reason as a warning (set its log_level to warning to see it)"


class CodeCarbonTracker(Tracker):
    name = "codecarbon"
    requires = ("codecarbon>=2.8.4",)
    # Like Hugging Face's CodeCarbonCallback, one measurement per machine: power and energy
    # are read for the whole node (or for this process), so the local main process of every
    # node measures. The hub creates this tracker on every rank; start() keeps only those.
    all_ranks = True
    # its hooks measure the training process and feed the figures back into the logs
    out_of_process = False

    def __init__(self, **settings):
        super().__init__(**settings)
        self.emissions_file: str | None = None
        self.figures: dict[str, float] | None = None
        self._codecarbon = None
        self._offset: dict[str, float] = {}
        self._lock = threading.Lock()  # the worker starts and finishes, hooks flush and stop
        self._ready = threading.Condition()
        self._started: RunInfo | None = None

    @classmethod
    def mode(cls) -> str:
        return "offline"

    def where(self) -> str | None:
        if self.emissions_file is None:
            return None
        if _has_carbonboard():
            return f"{self.emissions_file} (carbonboard --filepath {self.emissions_file})"
        # carbonboard's command is installed with codecarbon but fails without its extra
        return f"{self.emissions_file} (a CSV file; the run log has its totals as codecarbon/*)"

    # -- the Tracker API (worker thread) -------------------------------------------------

    def start(self, run: RunInfo):
        try:
            rank = run.args.process_index if run.args is not None else 0
            local_rank = run.args.local_process_index if run.args is not None else 0
            if run.kind != "train" or local_rank != 0:
                # neither evaluate()/predict() nor a node's other processes measure; the
                # run identity stays as it was
                return run.resume
            return self._start(run, rank)
        finally:
            with self._ready:
                self._started = run
                self._ready.notify_all()

    def _start(self, run: RunInfo, rank: int) -> dict:
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.core.config import get_hierarchical_config

        configured = get_hierarchical_config()
        options = {key: value for key, value in self.settings.items() if value is not None}
        defaults = {
            "output_dir": os.path.join(run.output_dir, "codecarbon"),
            "log_level": "info" if self.backend_output() else "error",
            "experiment_name": run.name,
            # codecarbon 3's default; codecarbon 2's lock file would outlive a tracker whose
            # set-up failed and keep every later tracker of the process from measuring
            "allow_multiple_runs": True,
        }
        if rank != 0:  # the main process of another node: its own file, even on a shared disk
            defaults["output_file"] = f"emissions-rank{rank}.csv"
        for key, value in defaults.items():
            if key not in configured:
                options.setdefault(key, value)

        def option(key, default):
            return options.get(key, configured.get(key, default))

        if option("country_iso_code", None) is None and option("cloud_provider", None) is None:
            logger.warning(
                "codecarbon: no country set, so emissions use the world-average carbon "
                "intensity; set CODECARBON_COUNTRY_ISO_CODE (e.g. FRA, USA) or "
                'tracker_config={"codecarbon": {"country_iso_code": ...}}'
            )
        directory = option("output_dir", ".")
        os.makedirs(directory, exist_ok=True)
        # absolute: the path is stored in checkpoints, which may be resumed from elsewhere
        self.emissions_file = os.path.abspath(
            os.path.join(directory, option("output_file", "emissions.csv"))
        )
        # codecarbon logs its greeting before it applies log_level: apply it first
        level = option("log_level", "error")
        try:
            logging.getLogger("codecarbon").setLevel(
                level.upper() if isinstance(level, str) else level
            )
        except (TypeError, ValueError):
            pass  # codecarbon itself reports a log level it does not know

        codecarbon = OfflineEmissionsTracker(**options)
        # codecarbon swallows its own errors, logging them as warnings: a tracker it could not
        # set up has no run_id
        if getattr(codecarbon, "run_id", None) is None:
            # the names only: settings may hold an API key
            raise RuntimeError(
                f"codecarbon could not set up an OfflineEmissionsTracker with settings "
                f"{sorted(options)}{WHY}"
            )
        resume = run.resume or {}
        previous = list(resume.get("run_ids", []))
        self._offset = (
            _totals(resume.get("emissions_file", self.emissions_file), previous) if previous else {}
        )
        codecarbon.start()
        with self._lock:
            self._codecarbon = codecarbon
            self.figures = None
        return {
            "run_ids": [*previous, str(codecarbon.run_id)],
            "emissions_file": self.emissions_file,
        }

    def log_metrics(self, metrics, step, epoch=None):
        """CodeCarbon has nowhere to store metrics: its own figures are all it records."""

    def finish(self, status):
        # Training that completed was stopped at its summary (on_log below); after a failure
        # or an interrupt this stops it, so no measurement thread outlives the run.
        self._stop()

    # -- hooks (loop thread) ---------------------------------------------------------------

    @hookimpl
    def on_save(self):
        """A row of emissions.csv per checkpoint, written once the checkpoint is on disk.

        Not in :meth:`flush`: trackmux also flushes when a run closes, which would add a row
        that says nothing new just before the one :meth:`finish` writes.
        """
        with self._lock:
            if self._codecarbon is not None and self._codecarbon.flush() is None:
                raise RuntimeError(f"codecarbon could not write its emissions row{WHY}")

    @hookimpl(tryfirst=True)
    def on_log(self, args, logs):
        """Stop measuring at the train summary and add the final figures to it.

        The summary is the last ``on_log`` of a completed ``train()``: the loop is over, so
        stopping here costs training nothing. Hooks share one logs dict, and ``tryfirst``
        runs this ahead of the hub's plain ``on_log``, which then sends the figures to every
        tracker. Callbacks (also tryfirst, and registered later) have already run: they do
        not see them.
        """
        if "train_runtime" not in logs:
            return
        with self._ready:  # start() runs on the worker and may still be under way
            self._ready.wait_for(lambda: self._started is self.run_info, args.tracker_close_timeout)
        figures = self._stop()
        if figures:
            logs.update({PREFIX + name: value for name, value in figures.items()})

    def _stop(self) -> dict[str, float] | None:
        with self._lock:
            codecarbon, self._codecarbon = self._codecarbon, None
            if codecarbon is None:
                return None
            codecarbon.stop()
            data = getattr(codecarbon, "final_emissions_data", None)
            if data is None:
                raise RuntimeError(f"codecarbon could not measure this run{WHY}")
            self.figures = {
                name: self._offset.get(name, 0.0) + float(getattr(data, name)) for name in FIGURES
            }
            return self.figures


def _totals(path: str, run_ids: list[str]) -> dict[str, float]:
    """The figures of earlier codecarbon runs of this training (before a resume): the last
    row of each run in its emissions file, added up."""
    last: dict[str, dict] = {}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("run_id") in run_ids:
                    last[row["run_id"]] = row
    except OSError as error:
        logger.warning(
            "codecarbon: cannot read the earlier runs' figures (%s); the reported totals "
            "start again from zero",
            error,
        )
    return {name: sum(float(row.get(name) or 0.0) for row in last.values()) for name in FIGURES}


def _has_carbonboard() -> bool:
    """Whether ``codecarbon[carbonboard]`` is installed (its dashboard needs dash)."""
    import importlib.util

    return all(
        importlib.util.find_spec(module) is not None
        for module in ("dash", "dash_bootstrap_components")
    )
