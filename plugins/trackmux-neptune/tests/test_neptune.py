"""trackmux-neptune against the real neptune client, offline: each run is read back from the
operations neptune writes under ``NEPTUNE_DATA_DIRECTORY/offline/run__*/data-*.log`` (one JSON
operation a line), the files ``neptune sync`` uploads. No test reaches the network."""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from trackmux import Trainer, TrainingArguments
from trackmux.testing import (
    RegressionDataset,
    RunData,
    StopAt,
    TinyRegressor,
    TrackerConformance,
    discovery_report,
    hidden_backend_report,
    jsonl_log,
    run_training,
)
from trackmux.testing.conformance import HYPERPARAMETERS, TRAINING_DEFAULTS
from trackmux_neptune import tracker as tracker_module
from trackmux_neptune.tracker import NeptuneTracker

PLUGIN_ENV = (
    "NEPTUNE_API_TOKEN",
    "NEPTUNE_PROJECT",
    "NEPTUNE_MODE",
    "NEPTUNE_DATA_DIRECTORY",
    "NEPTUNE_LOG_CHECKPOINTS",
    "NEPTUNE_CUSTOM_RUN_ID",
)
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every connection or name lookup beyond loopback fails, and the test with it."""
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in _LOOPBACK:
            attempts.append(address)
            raise OSError(f"no network in tests: connect to {address}")
        return real_connect(self, address)

    def getaddrinfo(host, *arguments, **keywords):
        if host not in _LOOPBACK and host is not None:
            attempts.append(host)
            raise socket.gaierror(f"no network in tests: lookup of {host}")
        return real_getaddrinfo(host, *arguments, **keywords)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield attempts
    assert attempts == []


@pytest.fixture(autouse=True)
def _offline_runs_end_with_the_test():
    # what the end of the process does: stop the offline runs kept open for reuse
    yield
    tracker_module._stop_open_runs()


@pytest.fixture
def plugin_log():
    """The records of the plugin's logger (``trackmux.neptune``)."""
    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    target = logging.getLogger("trackmux.neptune")
    target.addHandler(handler)
    yield records
    target.removeHandler(handler)


# -- reading neptune's offline operations back ---------------------------------------------


@dataclass
class OfflineRun:
    """One offline run directory: what ``neptune sync`` would upload as one Neptune run."""

    directory: Path
    fields: dict[str, Any] = field(default_factory=dict)
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    uploads: dict[str, list[str]] = field(default_factory=dict)
    operations: list[dict] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        prefix = "trackmux/params/"
        return {k[len(prefix) :]: v for k, v in self.fields.items() if k.startswith(prefix)}


def offline_runs(data_directory) -> list[OfflineRun]:
    """Every offline run under ``data_directory``, oldest first."""
    directories = Path(data_directory).glob("offline/run__*")

    def created(directory: Path) -> str:
        return json.loads((directory / "metadata.json").read_text())["createdAt"]

    runs = []
    for directory in sorted(directories, key=created):
        run = OfflineRun(directory)
        logs = sorted(directory.glob("data-*.log"), key=lambda p: int(p.stem.split("-")[1]))
        for log in logs:
            for line in log.read_text().splitlines():
                if not line.strip():
                    continue
                operation = json.loads(line)["obj"]
                run.operations.append(operation)
                path, kind = "/".join(operation["path"]), operation["type"]
                if kind == "LogFloats":
                    points = run.series.setdefault(path, [])
                    points += [(int(p["step"]), p["value"]) for p in operation["values"]]
                elif kind.startswith("Assign"):
                    run.fields[path] = operation["value"]
                elif kind == "UploadFileSet":
                    run.uploads.setdefault(path, []).extend(operation["file_globs"])
        runs.append(run)
    return runs


def train(output_dir, *, tracker=None, tracker_config=None, callbacks=(), **overrides):
    """A toy training; without ``tracker`` it finds neptune through ``report_to``."""
    arguments = {
        **TRAINING_DEFAULTS,
        "report_to": ["jsonl"] if tracker else ["jsonl", "neptune"],
        "output_dir": str(output_dir),
        **overrides,
    }
    trainer = Trainer(
        model=TinyRegressor(),
        args=TrainingArguments(**arguments),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        callbacks=list(callbacks),
        trackers=[tracker] if tracker else None,
        tracker_config=tracker_config,
        hyperparameters=HYPERPARAMETERS,
    )
    trainer.train()
    return trainer


class TestNeptuneConformance(TrackerConformance):
    tracker_class = NeptuneTracker

    def make_tracker(self, tmp_path):
        return NeptuneTracker()

    def read_back(self, tracker, tmp_path):
        runs = offline_runs(tracker.data_directory)
        assert runs, f"no offline run under {tracker.data_directory}"
        metrics: dict[str, list] = {}
        for run in runs:
            for name, points in run.series.items():
                metrics.setdefault(name, []).extend(points)
        return RunData(
            params=runs[-1].params,
            metrics=metrics,
            status=runs[-1].fields["trackmux/status"],
            runs=len(runs),
        )


# -- the plugin ----------------------------------------------------------------------------


def test_offline_by_default_under_the_output_dir_with_one_line_saying_how_to_upload(
    trackmux_env, plugin_log, capfd
):
    from trackmux.plugins import get_registry

    info = get_registry(refresh=True).get("neptune")
    assert info.available, info.reason
    assert info.distribution == "trackmux-neptune"
    assert info.tracker_class is NeptuneTracker
    assert info.mode() == "offline"

    trainer = train(trackmux_env / "out")
    data = trackmux_env / "out" / ".neptune"
    assert len(offline_runs(data)) == 1
    assert not (trackmux_env / ".neptune").exists()  # never the working directory
    command = (
        f"neptune sync --path {trackmux_env / 'out'} --project WORKSPACE/PROJECT --offline-only"
    )
    assert dict(trainer.trackers.where())["neptune"] == f"offline run in {data}; upload: {command}"
    assert [record.getMessage() for record in plugin_log] == [
        f"neptune: no NEPTUNE_API_TOKEN: logging offline to {data}; upload later with: {command}"
    ]
    # the client's own lines ("Neptune initialized", "Shutting down background jobs") are not
    # printed beside it
    tracker_module._stop_open_runs()
    captured = capfd.readouterr()
    assert "[neptune]" not in captured.out + captured.err


def test_params_metrics_and_status_as_neptune_fields_and_series(trackmux_env):
    train(trackmux_env / "out", tracker_config={"neptune": {"project": "team/toy"}})
    log = jsonl_log(trackmux_env / "out")
    (run,) = offline_runs(trackmux_env / "out" / ".neptune")

    # every metric at its exact step and value, nothing else as a series
    assert run.series == {**log.metrics, **{k: [(8, v)] for k, v in log.summary.items()}}
    assert [step for step, _ in run.series["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in run.series["eval/loss"]] == [4, 8]
    # params keep their types; what Neptune cannot store (None) is its string
    assert run.params["learning_rate"] == 0.01
    assert run.params["max_steps"] == 8
    assert run.params["disable_tqdm"] is True
    assert run.params["dataset"] == "toy-regression"
    nones = [key for key, value in log.config.items() if value is None]
    assert nones and all(run.params[key] == "None" for key in nones)
    assert set(run.params) == set(log.config)
    assert run.fields["trackmux/status"] == "success"
    assert run.fields["sys/failed"] is False
    assert run.fields["sys/name"] == "conformance"
    assert run.fields["trackmux/epoch"] == 2.0  # 4 steps an epoch: the epoch at step 8
    # no hidden capture: no hardware metrics, stdout/stderr, traceback or source files
    paths = {"/".join(op["path"]) for op in run.operations}
    assert not [path for path in paths if path.startswith("monitoring")]
    assert run.uploads == {"source_code/files": []}


def test_evaluate_and_predict_after_train_continue_the_same_run(trackmux_env):
    trainer = train(trackmux_env / "out")
    evaluated = trainer.evaluate(RegressionDataset(16, seed=3))
    trainer.predict(RegressionDataset(8, seed=4))
    (run,) = offline_runs(trackmux_env / "out" / ".neptune")

    # Neptune keeps strictly increasing steps: the evaluate() at step 8, where the series
    # already has a point, is a field of the run instead of a point the upload would reject
    assert [step for step, _ in run.series["eval/loss"]] == [4, 8]
    assert run.fields["trackmux/evaluate/eval/loss"] == evaluated["eval_loss"]
    assert [step for step, _ in run.series["test/loss"]] == [8]
    statuses = [op["value"] for op in run.operations if op["path"] == ["trackmux", "status"]]
    assert statuses == ["running", "success"] * 3
    assert [op for op in run.operations if op["path"] == ["trackmux", "params", "seed"]]


def test_a_resume_in_a_new_process_writes_a_second_run_with_the_same_key(trackmux_env, plugin_log):
    with pytest.raises(KeyboardInterrupt):
        run_training(
            trackmux_env / "out", NeptuneTracker(), callbacks=[StopAt(7, KeyboardInterrupt())]
        )
    tracker_module._stop_open_runs()  # the interrupted process ends
    run_training(trackmux_env / "out", NeptuneTracker(), resume=True)

    first, second = offline_runs(trackmux_env / "out" / ".neptune")
    assert first.fields["trackmux/run_key"] == second.fields["trackmux/run_key"]
    assert first.fields["trackmux/status"] == "killed" and first.fields["sys/failed"] is True
    assert second.fields["trackmux/status"] == "success" and second.fields["sys/failed"] is False
    assert [step for step, _ in first.series["train/loss"]] == [2, 4, 6]
    assert [step for step, _ in second.series["train/loss"]] == [6, 8]
    warnings = [r.getMessage() for r in plugin_log if r.levelno == logging.WARNING]
    assert warnings == [
        "neptune: an offline run cannot be reopened in a new process; this resume writes a "
        f"new offline run carrying the same trackmux/run_key {first.fields['trackmux/run_key']}"
    ]


def test_a_resume_in_the_same_process_continues_the_open_run(trackmux_env):
    tracker = NeptuneTracker()
    with pytest.raises(RuntimeError):
        run_training(trackmux_env / "out", tracker, callbacks=[StopAt(7, RuntimeError("x"))])
    run_training(trackmux_env / "out", NeptuneTracker(), resume=True)
    (run,) = offline_runs(trackmux_env / "out" / ".neptune")
    # step 6 was logged after the checkpoint: the resumed value is a field, the series stays
    # increasing
    log = jsonl_log(trackmux_env / "out")
    assert [step for step, _ in run.series["train/loss"]] == [2, 4, 6, 8]
    assert run.fields["trackmux/train/train/loss"] == dict(log.history("train/loss"))[6]
    assert run.fields["trackmux/status"] == "success"


@pytest.mark.parametrize("source", ["code", "environment", "default"])
def test_data_directory_precedence(trackmux_env, monkeypatch, source):
    code, env = trackmux_env / "from-code", trackmux_env / "from-env"
    if source != "default":
        monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(env))
    settings = {"neptune": {"data_directory": str(code)}} if source == "code" else None
    train(trackmux_env / "out", tracker_config=settings, max_steps=2, eval_strategy="no")
    expected = {"code": code, "environment": env, "default": trackmux_env / "out" / ".neptune"}
    (run,) = offline_runs(expected[source])
    assert run.series["train/loss"][0][0] == 2
    others = {code, env, trackmux_env / "out" / ".neptune"} - {expected[source]}
    assert not any(path.exists() for path in others)
    # the variable is the user's: left as it was
    assert os.environ.get("NEPTUNE_DATA_DIRECTORY") == (None if source == "default" else str(env))


def test_mode_from_token_and_neptune_mode(monkeypatch):
    tracker = NeptuneTracker()
    assert tracker._mode_and_token() == ("offline", None)
    assert NeptuneTracker.mode() == "offline"
    monkeypatch.setenv("NEPTUNE_API_TOKEN", "secret")
    assert tracker._mode_and_token() == ("async", "secret")
    assert NeptuneTracker.mode() == "online"
    monkeypatch.setenv("NEPTUNE_MODE", "offline")
    assert tracker._mode_and_token() == ("offline", "secret")
    assert NeptuneTracker.mode() == "offline"
    assert NeptuneTracker(mode="sync")._mode_and_token() == ("sync", "secret")
    monkeypatch.delenv("NEPTUNE_API_TOKEN")
    monkeypatch.setenv("NEPTUNE_MODE", "async")
    with pytest.raises(ValueError, match="needs an API token"):
        tracker._mode_and_token()
    monkeypatch.setenv("NEPTUNE_MODE", "read-only")
    with pytest.raises(ValueError, match="cannot log a training"):
        tracker._mode_and_token()


def test_an_online_mode_without_a_token_fails_before_the_first_step(trackmux_env, monkeypatch):
    from trackmux.delivery import TrackerError

    monkeypatch.setenv("NEPTUNE_MODE", "async")
    with pytest.raises(TrackerError, match="needs an API token"):
        train(trackmux_env / "out", max_steps=2)
    assert not (trackmux_env / "out" / ".neptune").exists()


@pytest.mark.parametrize(
    "policy, uploaded",
    [
        ("none", []),
        ("same", ["checkpoint-4", "checkpoint-8"]),
        ("last", ["checkpoint-8"]),
        ("best", ["checkpoint-8"]),
        ("end", ["model"]),
    ],
)
def test_checkpoint_policy(trackmux_env, monkeypatch, policy, uploaded):
    monkeypatch.setenv("NEPTUNE_LOG_CHECKPOINTS", policy)
    train(trackmux_env / "out")
    (run,) = offline_runs(trackmux_env / "out" / ".neptune")
    uploads = {k: v for k, v in run.uploads.items() if k.startswith("trackmux/checkpoints/")}
    assert sorted(uploads) == [f"trackmux/checkpoints/{name}" for name in uploaded]
    key = run.fields["trackmux/run_key"]
    for name in uploaded:
        # a copy beside the offline run: neptune sync reads it later, the original may be gone
        (glob,) = uploads[f"trackmux/checkpoints/{name}"]
        copy = trackmux_env / "out" / ".neptune" / "trackmux-files" / key / name
        assert glob == str(copy)
        assert any(copy.iterdir())


def test_an_unknown_checkpoint_policy_fails_before_training(trackmux_env, monkeypatch):
    monkeypatch.setenv("NEPTUNE_LOG_CHECKPOINTS", "sometimes")
    with pytest.raises(ValueError, match="NEPTUNE_LOG_CHECKPOINTS='sometimes'"):
        train(trackmux_env / "out")


def test_a_run_of_the_user_is_logged_into_and_never_stopped(trackmux_env, monkeypatch):
    import neptune

    monkeypatch.setenv("NEPTUNE_DATA_DIRECTORY", str(trackmux_env / "mine" / ".neptune"))
    mine = neptune.init_run(mode="offline", capture_hardware_metrics=False, source_files=[])
    try:
        tracker = NeptuneTracker(run=mine)
        trainer = run_training(trackmux_env / "out", tracker)
        trainer.evaluate()
        assert mine.get_state() == "started"
        mine["after"] = "still mine"
        mine.wait()
        (run,) = offline_runs(trackmux_env / "mine" / ".neptune")
        assert run.params["dataset"] == "toy-regression"
        assert [step for step, _ in run.series["train/loss"]] == [2, 4, 6, 8]
        assert run.fields["trackmux/status"] == "success"
        assert run.fields["after"] == "still mine"
        assert "sys/failed" not in run.fields or run.fields["sys/failed"] is False
    finally:
        mine.stop()


def test_names_neptune_cannot_take_are_cleaned():
    tracker = NeptuneTracker()
    assert tracker.sanitize_name("eval//acc/") == "eval/acc"
    assert tracker.sanitize_name("train/loss") == "train/loss"
    assert tracker.sanitize_name("/") == "_"


def test_import_and_discovery_load_neither_neptune_nor_torch():
    report = discovery_report("neptune", "trackmux_neptune", ("torch", "neptune", "pandas"))
    assert (report["available"], report["heavy"]) == (True, [])


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", "backend missing: neptune is not installed"),
        ("1.13.0", "unsupported backend: neptune 1.13.0 is installed, neptune>=1.14,<2"),
        ("2.0.0", "unsupported backend: neptune 2.0.0 is installed, neptune>=1.14,<2"),
    ],
    ids=["missing", "too-old", "neptune-2"],
)
def test_reports_itself_unavailable_without_a_usable_neptune(case, reason):
    report = hidden_backend_report(
        "neptune", "neptune", "neptune", version=None if case == "missing" else case
    )
    assert report["status"] == "unavailable"
    assert report["reason"].startswith(reason)
    assert report["fix"] == 'pip install "neptune>=1.14,<2"'
    assert report["error"] == (
        f"report_to names 'neptune', which is installed but cannot run: {report['reason']}; "
        'fix: pip install "neptune>=1.14,<2"'
    )
    assert report["skipped"] == report["reason"]
    assert report["imported"] is False


def test_points_neptune_cannot_store_are_left_out_with_one_warning(trackmux_env, plugin_log):
    from trackmux.tracker import RunInfo

    tracker = NeptuneTracker()
    tracker.run_info = RunInfo(name="nan", config={}, output_dir=str(trackmux_env / "out"))
    tracker.start(tracker.run_info)
    for step in (1, 2, 3):
        tracker.log_metrics({"train/loss": float("nan") if step < 3 else 0.5, "x": 1.0}, step)
    tracker.finish("success")
    (run,) = offline_runs(trackmux_env / "out" / ".neptune")
    assert run.series == {"train/loss": [(3, 0.5)], "x": [(1, 1.0), (2, 1.0), (3, 1.0)]}
    warnings = [r.getMessage() for r in plugin_log if r.levelno == logging.WARNING]
    assert warnings == [
        "neptune: train/loss is nan at step 1; Neptune stores finite numbers only, so such "
        "points are left out"
    ]


@pytest.mark.parametrize("delivery", ["thread", "process"])
def test_a_second_train_of_the_same_trainer_is_a_new_run_and_ends_the_first(trackmux_env, delivery):
    trainer = train(
        trackmux_env / "out", max_steps=2, eval_strategy="no", tracker_delivery=delivery
    )
    if delivery == "thread":
        (first_run,) = tracker_module._OPEN_RUNS.values()
    else:  # the first run lives in the delivery process of the first journal
        first_process = trainer._tracker_hub._last_delivery.process
    trainer.train()
    if delivery == "process":  # let go for the new journal, it ended the first run and exited
        assert first_process.wait(timeout=120) == 0
    first, second = offline_runs(trackmux_env / "out" / ".neptune")
    assert first.fields["trackmux/run_key"] != second.fields["trackmux/run_key"]
    if delivery == "thread":
        assert first_run.run.get_state() == "stopped"
        assert list(tracker_module._OPEN_RUNS) == [second.fields["trackmux/run_key"]]
