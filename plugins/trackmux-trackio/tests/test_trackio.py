"""The Trackio plugin against trackio's real local store, read back with trackio's own readers
(``trackio.Api`` and ``SQLiteStorage``, the dashboard's), in this process and in a fresh one."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from trackmux.testing import (
    RunData,
    StopAt,
    TrackerConformance,
    assert_found,
    assert_unavailable,
    describe_child,
    discovery_report,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux_trackio import store
from trackmux_trackio.tracker import (
    DEFAULT_PROJECT,
    DIR_ENV,
    PROJECT_ENV,
    REMOTE_ENV,
    RESERVED_KEYS,
    TrackioTracker,
)


def read_store(directory, project=DEFAULT_PROJECT) -> dict[str, dict]:
    """Every run of ``project`` in the store at ``directory``: its config (trackio's own
    ``_`` keys left out), metric series in the order written, and alerts."""
    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    runs = {}
    with store.using(directory):
        for run in trackio.Api().runs(project):
            metrics: dict[str, list] = {}
            for row in SQLiteStorage.get_logs(project, run.name, run_id=run.id):
                for key, value in row.items():
                    if key not in ("step", "timestamp"):
                        metrics.setdefault(key, []).append((row["step"], value))
            runs[run.id] = {
                "name": run.name,
                "config": {k: v for k, v in (run.config or {}).items() if not k.startswith("_")},
                "metrics": metrics,
                "alerts": [(a["level"], a["title"]) for a in run.alerts()],
            }
    return runs


class TestTrackioConformance(TrackerConformance):
    tracker_class = TrackioTracker

    def make_tracker(self, tmp_path):
        return TrackioTracker()  # the default store, <output_dir>/trackio

    def read_back(self, tracker, tmp_path):
        assert tracker.directory == str(tmp_path / "out" / "trackio")
        runs = read_store(tracker.directory)
        run = runs[tracker.run_id]
        # trackio has no run status (failures are alerts: tested below)
        return RunData(params=run["config"], metrics=run["metrics"], status=None, runs=len(runs))


def test_found_through_its_entry_point_and_writes_only_under_output_dir(trackmux_env):
    assert_found(
        "trackio", distribution="trackmux-trackio", tracker_class=TrackioTracker, mode="local"
    )
    trainer = run_training(trackmux_env / "out", report_to=["jsonl", "trackio"])
    directory = trackmux_env / "out" / "trackio"
    assert sorted(p.name for p in directory.iterdir() if p.suffix == ".db") == ["trackmux.db"]
    # nothing in the working directory (tmp_path) but output_dir, nothing in HOME
    assert [p.name for p in trackmux_env.iterdir()] == ["out"]
    assert not any("trackio" in str(p) for p in Path.home().rglob("*"))
    identity = trainer.state.tracker_runs["trackio"]
    assert identity["project"] == "trackmux" and identity["run_name"] == "conformance"
    assert dict(trainer.trackers.where())["trackio"] == (
        f"TRACKIO_DIR={directory} trackio show --project trackmux"
    )
    # trackio's module globals point back where they were
    import trackio.sqlite_storage
    import trackio.utils

    assert directory != trackio.utils.TRACKIO_DIR
    assert trackio.sqlite_storage.TRACKIO_DIR is trackio.utils.TRACKIO_DIR


def test_every_value_read_back_exactly_by_a_fresh_trackio_process(trackmux_env):
    """As a user reads it: TRACKIO_DIR set before trackio is imported, trackio's own Api."""
    run_training(trackmux_env / "out", TrackioTracker())
    log = jsonl_log(trackmux_env / "out")
    code = (
        "import json, trackio\n"
        "from trackio.sqlite_storage import SQLiteStorage\n"
        "(run,) = trackio.Api().runs('trackmux')\n"
        "rows = SQLiteStorage.get_logs('trackmux', run.name, run_id=run.id)\n"
        "print(json.dumps({'config': run.config, 'rows': rows}))\n"
    )
    env = {**os.environ, DIR_ENV: str(trackmux_env / "out" / "trackio")}
    result = run_child([sys.executable, "-c", code], env=env, timeout=300)
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["config"]["learning_rate"] == 0.01
    assert data["config"]["dataset"] == "toy-regression"
    assert data["config"]["_Username"] is None  # no whoami
    stored: dict[str, list] = {}
    for row in data["rows"]:
        for key, value in row.items():
            if key not in ("step", "timestamp"):
                stored.setdefault(key, []).append((row["step"], value))
    expected = {name: [tuple(point) for point in history] for name, history in log.metrics.items()}
    for name, history in expected.items():
        assert stored[name] == history, name
    for name, value in log.summary.items():
        assert stored[name] == [(8, value)], name
    assert set(stored) == set(expected) | set(log.summary), describe_child(result)


@pytest.mark.parametrize("source", ["code", "environment", "default"])
def test_dir_and_project_precedence(trackmux_env, monkeypatch, source):
    code, env = trackmux_env / "from-code", trackmux_env / "from-env"
    monkeypatch.setenv("HOME", str(trackmux_env))
    if source != "default":
        monkeypatch.setenv(DIR_ENV, "~/from-env")  # ~ is expanded
        monkeypatch.setenv(PROJECT_ENV, "env-project")
    settings = {"dir": str(code), "project": "code-project"} if source == "code" else {}
    tracker = TrackioTracker(**settings)
    run_training(trackmux_env / "out", tracker, max_steps=2, eval_strategy="no")
    expected = {"code": code, "environment": env, "default": trackmux_env / "out" / "trackio"}
    project = {"code": "code-project", "environment": "env-project", "default": "trackmux"}
    assert tracker.directory == str(expected[source])
    (run,) = read_store(expected[source], project[source]).values()
    assert run["metrics"]["train/loss"][0][0] == 2


@pytest.mark.parametrize(
    "error, alert",
    [
        (RuntimeError("boom"), ("error", "training failed")),
        (KeyboardInterrupt(), ("warn", "training interrupted")),
    ],
)
def test_a_run_that_ends_early_gets_an_alert(trackmux_env, error, alert):
    tracker = TrackioTracker()
    with pytest.raises(type(error)):
        run_training(trackmux_env / "out", tracker, callbacks=[StopAt(5, error)])
    (run,) = read_store(tracker.directory).values()
    assert run["alerts"] == [alert]


def test_a_successful_run_has_no_alert_and_resume_keeps_one_run(trackmux_env):
    tracker = TrackioTracker()
    with pytest.raises(KeyboardInterrupt):
        run_training(trackmux_env / "out", tracker, callbacks=[StopAt(7, KeyboardInterrupt())])
    resumed = TrackioTracker()
    run_training(trackmux_env / "out", resumed, resume=True)
    assert resumed.run_id == tracker.run_id
    (run,) = read_store(resumed.directory).values()
    # the interrupted run's step 6 stays beside the resumed one's
    assert [step for step, _ in run["metrics"]["train/loss"]] == [2, 4, 6, 6, 8]
    assert run["alerts"] == [("warn", "training interrupted")]


def test_reserved_and_underscore_names_are_kept_apart(trackmux_env):
    import trackio.utils

    import trackmux

    assert set(trackio.utils.RESERVED_KEYS) == RESERVED_KEYS
    tracker = TrackioTracker()
    with trackmux.start_run(
        ["jsonl"],
        trackers=[tracker],
        config={"_private": 1, "lr": 0.5},
        output_dir=trackmux_env / "out",
    ) as run:
        run.log({"step": 1.0, "__x": 2.0, "loss": 3.0}, step=1)
    (stored,) = read_store(tracker.directory).values()
    assert stored["metrics"] == {"step_": [(1, 1.0)], "_x": [(1, 2.0)], "loss": [(1, 3.0)]}
    assert stored["config"]["private"] == 1 and stored["config"]["lr"] == 0.5


def test_a_second_directory_while_a_run_is_open_is_refused(trackmux_env):
    with store.using(trackmux_env / "a"):
        with pytest.raises(RuntimeError, match="one store directory per process"):
            store.acquire(trackmux_env / "b")
        with store.using(trackmux_env / "a"):  # the same directory is fine
            pass


def test_trackmux_env_clears_every_setting_the_plugin_reads():
    from trackmux.testing.pytest_plugin import BACKEND_ENV_VARS

    assert {DIR_ENV, PROJECT_ENV, *REMOTE_ENV} <= set(BACKEND_ENV_VARS)


def test_import_and_discovery_load_neither_trackio_nor_torch():
    report = discovery_report("trackio", "trackmux_trackio", ("torch", "trackio"))
    assert (report["available"], report["heavy"]) == (True, [])


@pytest.mark.parametrize(
    "version, reason",
    [
        (None, "backend missing: trackio is not installed"),
        ("0.44.0", "unsupported backend: trackio 0.44.0 is installed, trackio"),
    ],
    ids=["missing", "too-old"],
)
def test_reports_itself_unavailable_without_a_usable_trackio(version, reason):
    fix = 'pip install "trackio>=0.45,<1"'
    assert_unavailable("trackio", "trackio", "trackio", version=version, reason=reason, fix=fix)


def test_no_network_even_with_a_hub_token(trackmux_env, monkeypatch, network_attempts):
    """No DNS lookup and no internet socket from trackio, with a Hugging Face token set."""
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token_0000")
    tracker = TrackioTracker()
    run_training(trackmux_env / "out", tracker, max_steps=4)
    assert network_attempts == []
    # trackio's whoami, which would have named the user, was not asked
    import trackio

    with store.using(tracker.directory):
        (run,) = trackio.Api().runs("trackmux")
        assert run.config["_Username"] is None
