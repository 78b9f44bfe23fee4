"""The SwanLab plugin against SwanLab running for real, offline, its run files read back with
SwanLab's own reader (``DataStoreReader``, what ``swanlab sync`` reads) and record protobufs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from swanlab.proto.swanlab.record.v1.record_pb2 import Record
from swanlab.proto.swanlab.run.v1.run_pb2 import RunState
from swanlab.sdk.internal.core_python.store import DataStoreReader

from trackmux.delivery import TrackerError
from trackmux.testing import (
    RunData,
    TrackerConformance,
    assert_found,
    assert_unavailable,
    discovery_report,
    jsonl_log,
    run_training,
)
from trackmux_swanlab.tracker import (
    API_KEY_ENV,
    LOG_DIR_ENV,
    MODE_ENV,
    PROJECT_ENV,
    SwanLabTracker,
)

STATUS = {
    "RUN_STATE_FINISHED": "success",
    "RUN_STATE_CRASHED": "failed",
    "RUN_STATE_ABORTED": "killed",
}


def records(run_file: Path) -> list[Record]:
    reader = DataStoreReader()
    reader.open(run_file)
    try:
        return [Record.FromString(raw) for raw in reader]
    finally:
        reader.close()


def read_sessions(log_dir) -> list[dict]:
    """Every session (run folder) under ``log_dir``, oldest first: its run id, project, name,
    config, metric series and final state."""
    sessions = []
    for run_file in Path(log_dir).glob("run-*/run-*.swanlab"):
        session = {"metrics": {}, "status": None, "started": None}
        for record in records(run_file):
            if record.HasField("start"):
                session.update(
                    id=record.start.id,
                    project=record.start.project,
                    name=record.start.name,
                    started=record.start.started_at.ToNanoseconds(),
                )
            elif record.HasField("scalar"):
                series = session["metrics"].setdefault(record.scalar.key, [])
                series.append((record.scalar.step, record.scalar.value.number))
            elif record.HasField("finish"):
                session["status"] = STATUS[RunState.Name(record.finish.state)]
        config = yaml.safe_load((run_file.parent / "files" / "config.yaml").read_text()) or {}
        session["config"] = {key: entry["value"] for key, entry in config.items()}
        session["folder"] = run_file.parent
        sessions.append(session)
    return sorted(sessions, key=lambda session: session["started"])


def read_run(log_dir, run_id) -> RunData:
    sessions = read_sessions(log_dir)
    mine = [session for session in sessions if session["id"] == run_id]
    metrics: dict[str, list] = {}
    for session in mine:
        for key, series in session["metrics"].items():
            metrics.setdefault(key, []).extend(series)
    return RunData(
        params=mine[-1]["config"],
        metrics=metrics,
        status=mine[-1]["status"],
        runs=len({session["id"] for session in sessions}),
    )


class TestSwanLabConformance(TrackerConformance):
    tracker_class = SwanLabTracker

    def make_tracker(self, tmp_path):
        return SwanLabTracker()  # offline, <output_dir>/swanlog

    def read_back(self, tracker, tmp_path):
        assert tracker.log_dir == str(tmp_path / "out" / "swanlog")
        return read_run(tracker.log_dir, tracker.run_id)


def test_found_through_its_entry_point_and_writes_only_under_output_dir(trackmux_env):
    assert_found(
        "swanlab", distribution="trackmux-swanlab", tracker_class=SwanLabTracker, mode="offline"
    )
    trainer = run_training(trackmux_env / "out", report_to=["jsonl", "swanlab"])
    log_dir = trackmux_env / "out" / "swanlog"
    (session,) = read_sessions(log_dir)
    assert (session["project"], session["name"]) == ("trackmux", "conformance")
    assert session["status"] == "success"
    # nothing in the working directory (tmp_path) but output_dir, nothing in HOME
    assert [p.name for p in trackmux_env.iterdir()] == ["out"]
    assert not [p for p in Path.home().rglob("*") if "swanlab" in str(p).lower()]
    identity = trainer.state.tracker_runs["swanlab"]
    assert identity["run_id"] == session["id"]
    assert dict(trainer.trackers.where())["swanlab"] == (
        f"swanlab sync {log_dir}/run-*-{session['id']}"
    )
    # swanlab's console capture is off: the run holds no terminal lines
    run_file = next(session["folder"].glob("run-*.swanlab"))
    assert not [record for record in records(run_file) if record.HasField("log")]


def test_every_value_exactly_and_the_config(trackmux_env):
    tracker = SwanLabTracker()
    run_training(trackmux_env / "out", tracker)
    log = jsonl_log(trackmux_env / "out")
    data = read_run(tracker.log_dir, tracker.run_id)
    for name, history in log.metrics.items():
        assert data.metrics[name] == [tuple(point) for point in history], name
    for name, value in log.summary.items():
        assert data.metrics[name] == [(8, value)], name
    assert set(data.metrics) == set(log.metrics) | set(log.summary)
    assert {key: data.params[key] for key in ("learning_rate", "max_steps", "dataset")} == {
        "learning_rate": 0.01,
        "max_steps": 8,
        "dataset": "toy-regression",
    }


@pytest.mark.parametrize("source", ["code", "environment", "default"])
def test_log_dir_and_project_precedence(trackmux_env, monkeypatch, source):
    code, env = trackmux_env / "from-code", trackmux_env / "from-env"
    monkeypatch.setenv("HOME", str(trackmux_env))
    if source != "default":
        monkeypatch.setenv(LOG_DIR_ENV, "~/from-env")  # ~ is expanded
        monkeypatch.setenv(PROJECT_ENV, "env-project")
    settings = {"log_dir": str(code), "project": "code-project"} if source == "code" else {}
    tracker = SwanLabTracker(**settings)
    run_training(trackmux_env / "out", tracker, max_steps=2, eval_strategy="no")
    expected = {"code": code, "environment": env, "default": trackmux_env / "out" / "swanlog"}
    project = {"code": "code-project", "environment": "env-project", "default": "trackmux"}
    assert tracker.log_dir == str(expected[source])
    (session,) = read_sessions(expected[source])
    assert session["project"] == project[source]
    assert session["metrics"]["train/loss"][0][0] == 2


def test_resume_continues_the_run_in_a_second_folder(trackmux_env):
    from trackmux.testing import StopAt

    tracker = SwanLabTracker()
    with pytest.raises(KeyboardInterrupt):
        run_training(trackmux_env / "out", tracker, callbacks=[StopAt(7, KeyboardInterrupt())])
    resumed = SwanLabTracker()
    run_training(trackmux_env / "out", resumed, resume=True)
    assert resumed.run_id == tracker.run_id
    first, second = read_sessions(resumed.log_dir)
    assert first["id"] == second["id"] == tracker.run_id
    assert (first["status"], second["status"]) == ("killed", "success")
    assert [step for step, _ in first["metrics"]["train/loss"]] == [2, 4, 6]
    assert [step for step, _ in second["metrics"]["train/loss"]] == [6, 8]


def test_online_without_an_api_key_is_refused_before_swanlab_can_ask(trackmux_env, monkeypatch):
    monkeypatch.setenv(MODE_ENV, "online")
    assert SwanLabTracker.mode() == "online"
    with pytest.raises(TrackerError, match="mode online needs an API key: set SWANLAB_API_KEY"):
        run_training(trackmux_env / "out", SwanLabTracker(), max_steps=2, eval_strategy="no")
    assert not (trackmux_env / "out" / "swanlog").exists()


def test_a_bad_mode_names_the_setting(trackmux_env):
    with pytest.raises(TrackerError, match=r"mode 'sideways' is not one of offline, local"):
        run_training(
            trackmux_env / "out", SwanLabTracker(mode="sideways"), max_steps=2, eval_strategy="no"
        )


def test_disabled_keeps_it_out_of_all(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "disabled")
    assert SwanLabTracker.unconfigured_reason() == "SWANLAB_MODE=disabled is set"


def test_a_run_already_open_is_refused_clearly(trackmux_env):
    import swanlab

    mine = swanlab.init(mode="disabled", settings=swanlab.Settings(interactive=False))
    try:
        with pytest.raises(TrackerError, match="a SwanLab run is already open in this process"):
            run_training(trackmux_env / "out", SwanLabTracker(), max_steps=2, eval_strategy="no")
    finally:
        mine.finish()


def test_trackmux_env_clears_every_setting_the_plugin_reads():
    from trackmux.testing.pytest_plugin import BACKEND_ENV_VARS

    read = {LOG_DIR_ENV, MODE_ENV, PROJECT_ENV, API_KEY_ENV, "SWANLAB_WORKSPACE"}
    assert read <= set(BACKEND_ENV_VARS)


def test_import_and_discovery_load_neither_swanlab_nor_torch():
    report = discovery_report("swanlab", "trackmux_swanlab", ("torch", "swanlab"))
    assert (report["available"], report["heavy"]) == (True, [])


@pytest.mark.parametrize(
    "version, reason",
    [
        (None, "backend missing: swanlab is not installed"),
        ("0.9.9", "unsupported backend: swanlab 0.9.9 is installed, swanlab"),
    ],
    ids=["missing", "too-old"],
)
def test_reports_itself_unavailable_without_a_usable_swanlab(version, reason):
    fix = 'pip install "swanlab>=0.10,<0.11"'
    assert_unavailable("swanlab", "swanlab", "swanlab", version=version, reason=reason, fix=fix)


def test_no_network_offline(trackmux_env, network_attempts):
    """No DNS lookup and no internet socket from SwanLab in its offline mode."""
    tracker = SwanLabTracker()
    run_training(trackmux_env / "out", tracker, max_steps=4)
    assert network_attempts == []
    assert read_run(tracker.log_dir, tracker.run_id).status == "success"
