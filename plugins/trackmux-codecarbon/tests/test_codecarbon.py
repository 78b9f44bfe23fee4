"""The codecarbon tracker against the real codecarbon, offline: emissions.csv is read back
with the csv module and compared with what the other trackers received.

TrackerConformance fits only in part: codecarbon stores no params or metrics (the suite's
params, metrics, status and resume tests read those back) and the tracker is created on every
rank on purpose (the suite's non-main-rank test counts creations). The subclass below keeps
what applies; the tests after it check the rest of the contract in codecarbon's terms: rows,
figures, status, resume, ranks.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import os
import socket
import sys
import textwrap
import threading
import time

import pytest

from trackmux import Tracker, TrainerCallback
from trackmux.testing import (
    StopAt,
    TrackerConformance,
    describe_child,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux_codecarbon.tracker import FIGURES, CodeCarbonTracker

SETTINGS = {"country_iso_code": "FRA", "project_name": "trackmux-tests"}


@pytest.fixture(autouse=True)
def offline(trackmux_env, monkeypatch):
    """No codecarbon configuration of the developer's leaks in, and any attempt to reach
    the network (a geo-IP lookup, an API call) is refused and fails the test."""
    for key in list(os.environ):
        if key.lower().startswith("codecarbon_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HOME", str(trackmux_env))  # no ~/.codecarbon.config
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("the network is off in these tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield trackmux_env
    assert attempts == [], f"codecarbon tried to reach the network: {attempts}"


class Recorder(Tracker):
    """Another tracker of the run (asynchronous, unlike jsonl): what it was sent."""

    name = "recorder"

    def __init__(self):
        super().__init__()
        self.summaries: list[tuple[int, dict]] = []

    def start(self, run):
        return None

    def log_metrics(self, metrics, step, epoch=None):
        pass

    def log_summary(self, metrics, step):
        self.summaries.append((step, metrics))

    def finish(self, status):
        pass


class RowsSeen(TrainerCallback):
    """How many rows emissions.csv holds at the start of each step."""

    def __init__(self, path):
        self.path = path
        self.rows = []

    def on_step_begin(self, args, state, control, **kwargs):
        self.rows.append(len(read_rows(self.path)))


def read_rows(path) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def figures_of(row) -> dict[str, float]:
    return {f"codecarbon/{name}": float(row[name]) for name in FIGURES}


def codecarbon_timers() -> list[threading.Thread]:
    """codecarbon's measurement threads (its schedulers run on threading.Timer), once the
    cancelled ones had time to end: a generous deadline, a loaded machine is slow to it."""
    deadline = time.monotonic() + 60
    while True:
        timers = [t for t in threading.enumerate() if isinstance(t, threading.Timer)]
        if not timers or time.monotonic() > deadline:
            return timers
        time.sleep(0.05)


# -- what is measured and where it goes ------------------------------------------------------


def test_rows_at_every_save_and_at_the_end(offline):
    tracker = CodeCarbonTracker(**SETTINGS)
    csv_path = offline / "out" / "codecarbon" / "emissions.csv"
    seen = RowsSeen(csv_path)
    trainer = run_training(offline / "out", tracker, callbacks=[seen])

    assert seen.rows == [0, 0, 0, 0, 1, 1, 1, 1]  # a row per checkpoint (steps 4 and 8)...
    rows = read_rows(csv_path)
    assert len(rows) == 3  # ...and the last one when training ended
    identity = trainer.state.tracker_runs["codecarbon"]
    assert identity == {"run_ids": [rows[0]["run_id"]], "emissions_file": str(csv_path)}
    assert {row["run_id"] for row in rows} == {rows[0]["run_id"]}
    assert {row["project_name"] for row in rows} == {"trackmux-tests"}
    assert {row["country_iso_code"] for row in rows} == {"FRA"}
    durations = [float(row["duration"]) for row in rows]
    assert 0 < durations[0] < durations[1] < durations[2]
    assert float(rows[-1]["emissions"]) > 0
    assert float(rows[-1]["energy_consumed"]) > 0
    assert tracker.where().startswith(str(csv_path))
    assert codecarbon_timers() == []


def test_registered_through_its_entry_point():
    from trackmux.plugins import get_registry

    info = get_registry(refresh=True).get("codecarbon")
    assert info.available, info.reason
    assert info.distribution == "trackmux-codecarbon"
    assert info.tracker_class is CodeCarbonTracker
    assert info.mode() == "offline"


def test_final_figures_reach_every_other_tracker(offline):
    recorder = Recorder()
    trainer = run_training(
        offline / "out",
        recorder,
        report_to=["jsonl", "codecarbon"],
        trainer_kwargs={"tracker_config": {"codecarbon": SETTINGS}},
    )
    assert [t.name for t in trainer.trackers.trackers] == ["jsonl", "codecarbon", "recorder"]

    last = read_rows(offline / "out" / "codecarbon" / "emissions.csv")[-1]
    expected = figures_of(last)
    assert expected["codecarbon/duration"] > 0 and expected["codecarbon/emissions"] > 0
    summary = jsonl_log(offline / "out").summary
    assert {k: v for k, v in summary.items() if k.startswith("codecarbon/")} == expected
    assert "train/train_runtime" in summary
    [(step, sent)] = recorder.summaries
    assert step == 8
    assert {k: v for k, v in sent.items() if k.startswith("codecarbon/")} == expected


def test_codecarbon_configuration_is_honoured_and_settings_win(offline, monkeypatch):
    monkeypatch.setenv("CODECARBON_COUNTRY_ISO_CODE", "CAN")
    monkeypatch.setenv("CODECARBON_PROJECT_NAME", "from-env")
    monkeypatch.setenv("CODECARBON_OUTPUT_DIR", str(offline / "cc-env"))
    (offline / "cc-env").mkdir()
    run_training(offline / "out", CodeCarbonTracker())
    rows = read_rows(offline / "cc-env" / "emissions.csv")
    assert {(r["country_iso_code"], r["project_name"]) for r in rows} == {("CAN", "from-env")}
    assert not (offline / "out" / "codecarbon").exists()

    run_training(
        offline / "out2", CodeCarbonTracker(project_name="from-setting", output_dir="cc-set")
    )
    rows = read_rows(offline / "cc-set" / "emissions.csv")
    assert {(r["country_iso_code"], r["project_name"]) for r in rows} == {("CAN", "from-setting")}


def test_without_a_country_it_warns_and_uses_the_world_average(offline, caplog):
    with caplog.at_level(logging.WARNING, logger="trackmux.codecarbon"):
        run_training(offline / "out", CodeCarbonTracker())
    assert "no country set" in caplog.text
    rows = read_rows(offline / "out" / "codecarbon" / "emissions.csv")
    assert float(rows[-1]["emissions"]) > 0


def test_a_codecarbon_that_cannot_start_is_reported_and_training_goes_on(offline, caplog):
    # codecarbon swallows its own set-up errors: the tracker must not stay silent about it
    tracker = CodeCarbonTracker(tracking_mode="bogus", api_key="secret-key")
    with caplog.at_level(logging.ERROR, logger="trackmux"):
        run_training(offline / "out", tracker, tracker_strict=False)
    assert "could not set up an OfflineEmissionsTracker" in caplog.text
    assert "secret-key" not in caplog.text
    log = jsonl_log(offline / "out")
    assert log.status == "success"
    assert not any(name.startswith("codecarbon/") for name in log.summary)


def test_evaluate_alone_is_not_measured(offline):
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing import RegressionDataset, TinyRegressor

    args = TrainingArguments(output_dir=str(offline / "out"), report_to=["jsonl"])
    trainer = Trainer(
        TinyRegressor(), args, eval_dataset=RegressionDataset(16), trackers=[CodeCarbonTracker()]
    )
    trainer.evaluate()
    assert not (offline / "out" / "codecarbon").exists()


# -- how training ends ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "error, status", [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "killed")]
)
def test_stopped_when_training_ends_early(offline, error, status):
    tracker = CodeCarbonTracker(**SETTINGS)
    with pytest.raises(type(error)):
        run_training(offline / "out", tracker, callbacks=[StopAt(5, error)])
    rows = read_rows(offline / "out" / "codecarbon" / "emissions.csv")
    assert len(rows) == 2  # the save at step 4, then stop() when the run closed
    assert float(rows[1]["duration"]) > float(rows[0]["duration"]) > 0
    assert tracker.figures == {name: float(rows[1][name]) for name in FIGURES}
    assert codecarbon_timers() == []
    log = jsonl_log(offline / "out")
    assert log.status == status
    assert not any(name.startswith("codecarbon/") for name in log.summary)  # no summary


def test_resume_appends_a_run_and_reports_the_total(offline):
    csv_path = offline / "out" / "codecarbon" / "emissions.csv"
    with pytest.raises(KeyboardInterrupt):
        run_training(
            offline / "out",
            CodeCarbonTracker(**SETTINGS),
            callbacks=[StopAt(6, KeyboardInterrupt())],
        )
    first = read_rows(csv_path)
    trainer = run_training(offline / "out", CodeCarbonTracker(**SETTINGS), resume=True)

    rows = read_rows(csv_path)
    assert rows[: len(first)] == first  # appended to the same file
    run_ids = list(dict.fromkeys(row["run_id"] for row in rows))
    assert len(run_ids) == 2  # one codecarbon run per process, in one trackmux run
    assert trainer.state.tracker_runs["codecarbon"]["run_ids"] == run_ids
    last = {run_id: [r for r in rows if r["run_id"] == run_id][-1] for run_id in run_ids}
    summary = jsonl_log(offline / "out").summary
    for name in FIGURES:
        total = float(last[run_ids[0]][name]) + float(last[run_ids[1]][name])
        assert summary[f"codecarbon/{name}"] == pytest.approx(total, rel=1e-12), name
    assert summary["codecarbon/duration"] > float(last[run_ids[1]]["duration"])


# -- ranks -----------------------------------------------------------------------------------


def test_nothing_on_other_processes_of_a_node(offline, monkeypatch):
    # what rank 1 of a node sees; WORLD_SIZE stays 1 so no process group is needed
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    tracker = CodeCarbonTracker(**SETTINGS)
    trainer = run_training(offline / "out", tracker, report_to="none")
    assert trainer.trackers.trackers == [tracker]  # created on every rank, by design
    assert tracker.emissions_file is None and tracker.figures is None
    assert not (offline / "out" / "codecarbon").exists()
    assert codecarbon_timers() == []


def test_main_process_of_another_node_writes_its_own_file(offline, monkeypatch):
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    tracker = CodeCarbonTracker(**SETTINGS)
    run_training(offline / "out", tracker, report_to="none")
    directory = offline / "out" / "codecarbon"
    assert sorted(os.listdir(directory)) == ["emissions-rank2.csv"]
    assert len(read_rows(directory / "emissions-rank2.csv")) == 3
    assert tracker.figures["emissions"] > 0


def test_torchrun_two_processes_measure_once(offline):
    script = offline / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            from trackmux.testing import run_training
            trainer = run_training("out", report_to=["jsonl", "codecarbon"],
                                   trainer_kwargs={{"tracker_config": {{"codecarbon": {SETTINGS!r}}}}})
            [tracker] = [t for t in trainer.trackers.trackers if t.name == "codecarbon"]
            with open(f"rank{{os.environ['RANK']}}.json", "w") as handle:
                json.dump({{"file": tracker.emissions_file, "figures": tracker.figures}}, handle)
            """
        )
    )
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = run_child(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", str(script)],
        cwd=offline,
        env=environment,
        timeout=300,
    )
    rank0 = json.loads((offline / "rank0.json").read_text())
    rank1 = json.loads((offline / "rank1.json").read_text())
    child = describe_child(done)
    assert rank1 == {"file": None, "figures": None}, child
    assert sorted(os.listdir(offline / "out" / "codecarbon")) == ["emissions.csv"], child
    last = read_rows(offline / "out" / "codecarbon" / "emissions.csv")[-1]
    assert {f"codecarbon/{k}": v for k, v in rank0["figures"].items()} == figures_of(last)
    summary = jsonl_log(offline / "out").summary
    assert {k: v for k, v in summary.items() if k.startswith("codecarbon/")} == figures_of(last)


# -- packaging -------------------------------------------------------------------------------


def test_unavailable_backend_is_reported(monkeypatch):
    from trackmux.plugins import UNAVAILABLE, PluginRegistry
    from trackmux.report_to import ReportToError, resolve

    real_version = importlib.metadata.version

    def version(name):
        if name == "codecarbon":
            raise importlib.metadata.PackageNotFoundError(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    registry = PluginRegistry()
    registry.add_tracker(CodeCarbonTracker)
    info = registry.get("codecarbon")
    assert info.status == UNAVAILABLE
    assert info.reason == "backend missing: codecarbon is not installed"
    assert info.fix == 'pip install "codecarbon>=2.8.4"'
    with pytest.raises(ReportToError, match="cannot run"):
        resolve(["codecarbon"], registry)
    assert "codecarbon" in [name for name, _ in resolve("all", registry).skipped]


def test_importing_the_plugin_does_not_import_codecarbon():
    code = "import sys, trackmux_codecarbon.tracker; print('codecarbon' in sys.modules)"
    result = run_child([sys.executable, "-c", code])
    assert result.stdout.strip() == "False", describe_child(result)


class TestCodeCarbonConformance(TrackerConformance):
    """The suite's backend-availability check; what codecarbon cannot store is covered by the
    codecarbon-specific tests above."""

    tracker_class = CodeCarbonTracker

    def make_tracker(self, tmp_path):
        return CodeCarbonTracker(country_iso_code="USA")

    def read_back(self, tracker, tmp_path):
        raise AssertionError("codecarbon stores no params or metrics to read back")

    test_params_and_config_arrive = None
    test_every_metric_at_every_step = None
    test_status_success = None
    test_status_when_training_ends_early = None
    test_resume_continues_the_same_run = None
    test_a_plain_loop_run_arrives = None
    test_params_added_after_start_arrive = None
    test_no_metric_overwrites_another = None
    test_secrets_never_reach_the_backend = None  # it stores no params: nothing to leak
    test_nothing_on_non_main_ranks = None  # created on every rank by design: tested above
