"""trackmux-clearml against the real clearml SDK in offline mode: every test reads the offline
session ClearML writes (``metrics.jsonl``, ``task.json``, ``log.jsonl``, ``data/``), the
package ``clearml-task --import-offline-session`` uploads."""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
import zipfile
from pathlib import Path

import pytest

from trackmux.testing import (
    RunData,
    TrackerConformance,
    describe_child,
    discovery_report,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux.testing.conformance import StopAt
from trackmux.tracker import RunInfo
from trackmux_clearml.tracker import (
    IMPORT_COMMAND,
    SECTION,
    ClearMLTracker,
    configured_server,
    title_and_series,
)

SUMMARY = "Summary"  # the metric ClearML files report_single_value() under


def read_events(folder: Path, name: str) -> list[dict]:
    """The events of an offline ``*.jsonl`` file: one JSON array per line."""
    path = folder / name
    if not path.exists():
        return []
    return [event for line in path.read_text().splitlines() if line for event in json.loads(line)]


def read_session(folder) -> dict:
    """What an offline session holds, in trackmux's terms: params (strings, as ClearML keeps
    them), metrics {name: [(step, value)]} with title/series joined back into trackmux's names,
    single values, the status trackmux wrote into the console log, the task record."""
    folder = Path(folder)
    task = json.loads((folder / "task.json").read_text())
    section = task.get("hyperparams", {}).get(SECTION, {})
    metrics: dict[str, list[tuple[int, float]]] = {}
    single: dict[str, float] = {}
    for event in read_events(folder, "metrics.jsonl"):
        if event["type"] != "training_stats_scalar":
            continue
        if event["metric"] == SUMMARY:
            single[event["variant"]] = event["value"]
            continue
        title, series = event["metric"], event["variant"]
        name = title if title == series else f"{title}/{series}"
        metrics.setdefault(name, []).append((event["iter"], event["value"]))
    status = None
    for event in read_events(folder, "log.jsonl"):
        for line in event.get("msg", "").splitlines():
            if line.startswith("trackmux: ") and " ended: " in line:
                status = line.rsplit(" ", 1)[-1]
    return {
        "params": {key: entry["value"] for key, entry in section.items()},
        "metrics": metrics,
        "single": single,
        "status": status,
        "task": task,
    }


def sessions(cache: Path) -> list[Path]:
    return sorted(path for path in (cache / "offline").glob("offline-*") if path.is_dir())


class TestClearMLConformance(TrackerConformance):
    tracker_class = ClearMLTracker
    params_as_strings = True

    def make_tracker(self, tmp_path):
        return ClearMLTracker()

    def read_back(self, tracker, tmp_path):
        folder = Path(tracker.task.get_offline_mode_folder())
        cache = tmp_path / "clearml-cache"
        assert folder.parent == cache / "offline"
        data = read_session(folder)
        # single values have no step: the last logged step stands for it
        metrics = dict(data["metrics"])
        for name, value in data["single"].items():
            metrics[name] = [(None, value)]
        return RunData(
            params=data["params"], metrics=metrics, status=data["status"], runs=len(sessions(cache))
        )


# -- what arrives -----------------------------------------------------------------------------


def test_params_connected_once_as_strings(trackmux_env, clearml_home):
    tracker = ClearMLTracker()
    run_training(trackmux_env / "out", tracker)
    log = jsonl_log(trackmux_env / "out")
    task = read_session(tracker.task.get_offline_mode_folder())["task"]
    # one section, trackmux's; ClearML keeps every value as a string, None as ""
    assert set(task["hyperparams"]) == {SECTION}
    params = {key: entry["value"] for key, entry in task["hyperparams"][SECTION].items()}
    expected = {key: "" if value is None else str(value) for key, value in log.config.items()}
    assert params == expected
    assert params["learning_rate"] == "0.01" and params["model/hidden"] == "16"


def test_every_scalar_at_its_global_step(trackmux_env):
    tracker = ClearMLTracker()
    run_training(trackmux_env / "out", tracker)
    log = jsonl_log(trackmux_env / "out")
    data = read_session(tracker.task.get_offline_mode_folder())
    events = read_events(Path(tracker.task.get_offline_mode_folder()), "metrics.jsonl")
    graphs = {(e["metric"], e["variant"]) for e in events if e["metric"] != SUMMARY}
    assert ("eval", "loss") in graphs and ("train", "loss") in graphs

    expected = {name: history for name, history in log.metrics.items()}
    epochs = data["metrics"].pop("train/epoch")
    assert data["metrics"] == expected
    assert epochs == [(2, 0.5), (4, 1.0), (6, 1.5), (8, 2.0)]
    assert data["single"] == log.summary
    assert "train/train_runtime" in data["single"]


@pytest.mark.parametrize(
    "name, graph",
    [
        ("eval/loss", ("eval", "loss")),
        ("train/grad_norm", ("train", "grad_norm")),
        ("test/f1/macro", ("test", "f1/macro")),
        ("lr", ("lr", "lr")),
    ],
)
def test_metric_names_become_title_and_series(name, graph):
    assert title_and_series(name) == graph


def test_close_takes_a_tenth_of_a_second_not_twelve(trackmux_env):
    from clearml import Task

    tracker = ClearMLTracker()
    tracker.start(RunInfo(name="close", config={"a": 1}, output_dir=str(trackmux_env)))
    tracker.log_metrics({"train/loss": 1.0}, 1)
    began = time.perf_counter()
    tracker.finish("success")
    took = time.perf_counter() - began
    # the reporting subprocess made close() wait 11-12 s here; reporting threads take 0.1 s
    # (how long it takes is for a benchmark: on a loaded machine anything takes longer)
    assert not Task._report_subprocess_enabled
    assert Path(tracker.session_zip).is_file()
    print(f"close: {took:.3f} s")


_USER_CHOICE = """
import sys
from clearml.config import ConfigSDKWrapper
from trackmux_clearml.tracker import _report_in_threads
_report_in_threads()
print(ConfigSDKWrapper.get("development.report_use_subprocess", None))
"""


@pytest.mark.parametrize("written, kept", [("true", "True"), (None, "False")])
def test_a_report_subprocess_chosen_in_clearml_conf_is_kept(tmp_path, monkeypatch, written, kept):
    config = tmp_path / "user.conf"
    config.write_text(
        f"sdk {{ development {{ report_use_subprocess: {written} }} }}\n" if written else ""
    )
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(config))
    result = run_child([sys.executable, "-c", _USER_CHOICE])
    assert result.stdout.strip().splitlines()[-1] == kept, describe_child(result)


# -- which task -----------------------------------------------------------------------------


def test_offline_without_a_server_said_in_one_line(trackmux_env, clearml_home, caplog):
    tracker = ClearMLTracker()
    with caplog.at_level(logging.WARNING, logger="trackmux_clearml"):
        trainer = run_training(trackmux_env / "out", tracker)
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("trackmux_clearml")]
    assert len(lines) == 1
    zip_path = f"{tracker.task.get_offline_mode_folder()}.zip"
    assert lines[0].endswith(f"{IMPORT_COMMAND} {zip_path}")
    assert "offline" in lines[0]
    assert Path(zip_path).is_file() and Path(zip_path).parent == clearml_home / "offline"
    # the archive is what gets imported: the same session inside
    with zipfile.ZipFile(zip_path) as archive:
        assert {"task.json", "metrics.jsonl"} <= set(archive.namelist())
    assert dict(trainer.trackers.where())["clearml"] == (
        f"offline task {tracker.task_id}: {IMPORT_COMMAND} {zip_path}"
    )
    assert trainer.state.tracker_runs["clearml"] == {"task_id": tracker.task_id, "offline": True}


def test_project_and_task_name_from_env_and_settings(trackmux_env, monkeypatch):
    monkeypatch.setenv("CLEARML_PROJECT", "from-env")
    monkeypatch.setenv("CLEARML_TASK", "task-from-env")
    out = str(trackmux_env / "out")

    def opened(tracker):
        tracker.start(RunInfo(name="run-name", config={}, output_dir=out))
        tracker.finish("success")
        task = read_session(tracker.task.get_offline_mode_folder())["task"]
        return task["project_name"], task["name"]

    assert opened(ClearMLTracker()) == ("from-env", "task-from-env")
    assert opened(ClearMLTracker(project="code", task_name="t")) == ("code", "t")
    monkeypatch.delenv("CLEARML_PROJECT")
    monkeypatch.delenv("CLEARML_TASK")
    assert opened(ClearMLTracker()) == ("trackmux", "run-name")


def test_the_users_task_is_used_and_left_open(trackmux_env, clearml_home):
    from clearml import Task

    Task.set_offline(True)
    mine = Task.init(
        project_name="mine",
        task_name="pipeline-step",
        reuse_last_task_id=False,
        auto_connect_frameworks=False,
        auto_connect_arg_parser=False,
        auto_connect_streams=False,
        auto_resource_monitoring=False,
    )
    try:
        tracker = ClearMLTracker()
        trainer = run_training(trackmux_env / "out", tracker)
        trainer.evaluate()
        assert tracker.task is mine and not tracker.owns_task
        assert Task.current_task() is mine  # not closed: it is still the process's task
        assert not Path(f"{mine.get_offline_mode_folder()}.zip").exists()
        mine.get_logger().report_scalar("mine", "x", 1.0, iteration=1)
    finally:
        mine.close()
    assert sessions(clearml_home) == [Path(mine.get_offline_mode_folder())]
    data = read_session(mine.get_offline_mode_folder())
    assert [step for step, _ in data["metrics"]["eval/loss"]] == [4, 8, 8]
    assert data["metrics"]["mine/x"] == [(1, 1.0)]
    assert data["params"]["learning_rate"] == "0.01"


def test_evaluate_after_train_reopens_the_same_task(trackmux_env, clearml_home):
    tracker = ClearMLTracker()
    trainer = run_training(trackmux_env / "out", tracker)
    first = tracker.task_id
    trainer.evaluate()
    assert tracker.task_id == first
    assert sessions(clearml_home) == [Path(tracker.task.get_offline_mode_folder())]
    data = read_session(tracker.task.get_offline_mode_folder())
    # not shifted past the task's last iteration, as ClearML's continue_last_task would
    assert [step for step, _ in data["metrics"]["eval/loss"]] == [4, 8, 8]
    assert data["status"] == "success"


def test_failed_training_leaves_its_status_in_the_session(trackmux_env):
    tracker = ClearMLTracker()
    with pytest.raises(RuntimeError):
        run_training(trackmux_env / "out", tracker, callbacks=[StopAt(3, RuntimeError("x"))])
    folder = Path(tracker.task.get_offline_mode_folder())
    assert read_session(folder)["status"] == "failed"
    assert Path(f"{folder}.zip").is_file()


def test_a_resumed_offline_task_stays_offline_with_a_server_configured(
    trackmux_env, clearml_home, monkeypatch
):
    out = str(trackmux_env / "out")
    first = ClearMLTracker()
    identity = first.start(RunInfo(name="r", config={"a": 1}, output_dir=out))
    first.log_metrics({"train/loss": 1.0}, 2)
    first.finish("killed")
    # a server now, but the session it continues lives offline; nothing goes to the network
    monkeypatch.setenv("CLEARML_API_HOST", "http://127.0.0.1:9")
    assert ClearMLTracker.mode() == "online"
    again = ClearMLTracker()
    again.start(RunInfo(name="r", config={"a": 1}, output_dir=out, resume=identity, step=2))
    again.log_metrics({"train/loss": 0.5}, 4)
    again.finish("success")
    assert again.offline and again.task_id == first.task_id
    data = read_session(again.task.get_offline_mode_folder())
    assert data["metrics"]["train/loss"] == [(2, 1.0), (4, 0.5)]
    assert data["status"] == "success"
    assert len(sessions(clearml_home)) == 1


_PROCESS = """
import json, sys
from trackmux.tracker import RunInfo
from trackmux_clearml.tracker import ClearMLTracker
resume = json.loads(sys.argv[1]) or None
tracker = ClearMLTracker()
identity = tracker.start(RunInfo(name="r", config={"lr": 0.1}, output_dir=".", resume=resume))
tracker.log_metrics({"train/loss": float(sys.argv[2])}, int(sys.argv[3]))
tracker.finish(sys.argv[4])
print(json.dumps(identity))
"""


def test_resume_in_a_new_process_continues_the_offline_task(trackmux_env, clearml_home):
    """What a restarted job does: a fresh process reopens the session by its id alone. It is
    also a child of a process whose task has closed, whose leftover CLEARML_PROC_MASTER_ID
    ("<pid>:") would make clearml hand it a stub task that records nothing."""

    def process(resume, value, step, status):
        result = run_child(
            [sys.executable, "-c", _PROCESS, json.dumps(resume), str(value), str(step), status],
            check=False,
        )
        assert result.returncode == 0, describe_child(result)
        return json.loads(result.stdout.strip().splitlines()[-1])

    first = ClearMLTracker()
    identity = first.start(RunInfo(name="r", config={"lr": 0.1}, output_dir="."))
    first.log_metrics({"train/loss": 1.0}, 2)
    first.finish("killed")
    assert process(identity, 0.5, 4, "success") == identity
    (folder,) = sessions(clearml_home)
    assert folder.name == identity["task_id"]
    data = read_session(folder)
    assert data["metrics"]["train/loss"] == [(2, 1.0), (4, 0.5)]
    assert data["params"] == {"lr": "0.1"}
    assert data["status"] == "success"


# -- configuration -----------------------------------------------------------------------------


def test_mode_follows_the_configured_server(tmp_path, monkeypatch):
    config = tmp_path / "clearml.conf"
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(config))
    config.write_text('api { credentials { "access_key" = "", "secret_key" = "" } }\n')
    assert ClearMLTracker.mode() == "offline" and configured_server() is None
    config.write_text('api {\n credentials {\n  "access_key" = "ABC123"\n }\n}\n')
    assert ClearMLTracker.mode() == "online" and configured_server() == str(config)
    monkeypatch.setenv("CLEARML_OFFLINE_MODE", "1")
    assert ClearMLTracker.mode() == "offline"
    monkeypatch.delenv("CLEARML_OFFLINE_MODE")
    config.write_text("")
    monkeypatch.setenv("CLEARML_API_ACCESS_KEY", "key")
    assert configured_server() == "CLEARML_API_ACCESS_KEY"


@pytest.mark.parametrize(
    "value, policy",
    [("true", "checkpoint"), ("1", "checkpoint"), ("false", "none"), ("end", "end"), ("", "none")],
)
def test_clearml_log_model_maps_to_a_policy(monkeypatch, value, policy):
    monkeypatch.setenv("CLEARML_LOG_MODEL", value)
    assert ClearMLTracker().artifact_policy() == policy
    assert ClearMLTracker(artifacts="last").artifact_policy() == "last"  # code wins


def artifact_zips(tracker) -> dict[str, set[str]]:
    task = read_session(tracker.task.get_offline_mode_folder())["task"]
    stored = {}
    for artifact in task["execution"]["artifacts"]:
        with zipfile.ZipFile(artifact["uri"]) as archive:
            stored[artifact["key"]] = set(archive.namelist())
    return stored


def test_clearml_log_model_uploads_every_checkpoint(trackmux_env, monkeypatch):
    monkeypatch.setenv("CLEARML_LOG_MODEL", "true")
    tracker = ClearMLTracker()
    run_training(trackmux_env / "out", tracker)
    stored = artifact_zips(tracker)
    assert set(stored) == {"checkpoint-4", "checkpoint-8"}
    assert {"model.safetensors", "trainer_state.json"} <= stored["checkpoint-8"]


def test_final_model_with_the_end_policy(trackmux_env):
    tracker = ClearMLTracker(artifacts="end")
    run_training(trackmux_env / "out", tracker)
    stored = artifact_zips(tracker)
    assert set(stored) == {"model"}
    assert "model.safetensors" in stored["model"]


# -- network and import cost ---------------------------------------------------------------------


def test_offline_makes_no_network_call(trackmux_env, monkeypatch):
    """Not even clearml's update check (a POST to updates.clear.ml from a thread, made offline
    too unless the plugin skips it): no name is looked up, nothing but loopback connected."""
    looked_up, connected = [], []
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        connected.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    run_training(trackmux_env / "out", ClearMLTracker())
    time.sleep(0.5)  # the update check would run in a daemon thread started by Task.init
    assert looked_up == []
    assert [a for a in connected if not (isinstance(a, tuple) and a[0] == "127.0.0.1")] == []


def test_import_and_discovery_load_neither_clearml_nor_torch():
    report = discovery_report("clearml", "trackmux_clearml", ("clearml", "torch"))
    assert {key: report[key] for key in ("available", "distribution", "mode", "heavy")} == {
        "available": True,
        "distribution": "trackmux-clearml",
        "mode": "offline",
        "heavy": [],
    }


_WITHOUT_CLEARML = """
import importlib.metadata, json, sys
real_version = importlib.metadata.version
def version(name):
    if name == "clearml":
        raise importlib.metadata.PackageNotFoundError(name)
    return real_version(name)
importlib.metadata.version = version
from trackmux.plugins import get_registry
from trackmux.report_to import ReportToError, resolve
info = get_registry().get("clearml")
try:
    resolve(["clearml"], get_registry())
    error = None
except ReportToError as raised:
    error = str(raised)
print(json.dumps({"status": info.status, "reason": info.reason, "fix": info.fix,
                  "error": error, "imported": "clearml" in sys.modules}))
"""


def test_reports_itself_unavailable_without_clearml():
    report = json.loads(run_child([sys.executable, "-c", _WITHOUT_CLEARML]).stdout)
    assert report["status"] == "unavailable"
    assert report["reason"].startswith("backend missing: clearml is not installed")
    assert report["fix"] == 'pip install "clearml>=2.0"'
    assert "cannot run" in report["error"] and report["fix"] in report["error"]
    assert report["imported"] is False
