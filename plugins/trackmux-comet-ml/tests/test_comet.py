"""The Comet plugin against real comet_ml offline experiments, read back from the zip archives
comet_ml writes (``experiment.json`` + ``messages.json``, the files ``comet upload`` sends)."""

from __future__ import annotations

import json
import logging
import os
import sys
import zipfile
from pathlib import Path

import pytest

from trackmux.delivery import TrackerError
from trackmux.testing import (
    RunData,
    TrackerConformance,
    assert_found,
    assert_unavailable,
    describe_child,
    discovery_report,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux.testing.conformance import HYPERPARAMETERS, TRAINING_DEFAULTS
from trackmux.tracker import RunInfo
from trackmux_comet.tracker import CometTracker

#: what comet_ml logs on its own: the step and epoch it tracks, as params, and at end() the
#: process duration, as a metric
COMET_PARAMS = {"curr_step", "curr_epoch"}
COMET_METRICS = {"process duration"}

COMET_ENV_VARS = (
    "COMET_WORKSPACE",
    "COMET_OFFLINE_DIRECTORY",
    "COMET_LOG_ASSETS",
    "COMET_CONFIG",
    "COMET_EXPERIMENT_KEY",
)


@pytest.fixture(autouse=True)
def _no_comet_settings_from_the_outside(monkeypatch, tmp_path):
    for name in COMET_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # no ~/.comet.config of the developer's can make a test go online
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# -- reading comet_ml's offline archives ------------------------------------------------------


def read_archive(path) -> tuple[dict, list[dict]]:
    """(experiment.json, the messages of messages.json) of one offline archive."""
    with zipfile.ZipFile(path) as archive:
        meta = json.loads(archive.read("experiment.json"))
        lines = archive.read("messages.json").decode().splitlines()
    return meta, [json.loads(line) for line in lines if line.strip()]


def archives(directory) -> list[Path]:
    """The archives under ``directory``, oldest first (a resumed run writes one more)."""
    found = [(read_archive(path)[0]["start_time"], path) for path in Path(directory).glob("*.zip")]
    return [path for _, path in sorted(found)]


def messages(directory, kind: str) -> list[dict]:
    return [
        message["payload"]
        for path in archives(directory)
        for message in read_archive(path)[1]
        if message["type"] == kind
    ]


def read_experiments(directory) -> RunData:
    """Everything the archives under ``directory`` hold, merged as ``comet upload`` would."""
    keys = {read_archive(path)[0]["offline_id"] for path in archives(directory)}
    params = {
        payload["param"]["paramName"]: payload["param"]["paramValue"]
        for payload in messages(directory, "parameter_msg")
        if payload["param"]["paramName"] not in COMET_PARAMS
    }
    metrics: dict[str, list] = {}
    for payload in messages(directory, "metric_msg"):
        metric = payload["metric"]
        if metric["metricName"] not in COMET_METRICS:
            entry = (metric["step"], metric["metricValue"])
            metrics.setdefault(metric["metricName"], []).append(entry)
    others = [(p["key"], p["value"]) for p in messages(directory, "log_other")]
    statuses = [value for key, value in others if key == "status"]
    return RunData(
        params=params,
        metrics=metrics,
        status=statuses[-1] if statuses else None,
        runs=len(keys),
    )


def train(output_dir, *, tracker_config=None, report_to=("jsonl", "comet_ml"), **overrides):
    """A toy training that finds the tracker through ``report_to``, as users do."""
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing import RegressionDataset, TinyRegressor

    arguments = {
        **TRAINING_DEFAULTS,
        "report_to": list(report_to),
        "output_dir": str(output_dir),
        **overrides,
    }
    trainer = Trainer(
        model=TinyRegressor(),
        args=TrainingArguments(**arguments),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        tracker_config=tracker_config,
        hyperparameters=HYPERPARAMETERS,
    )
    trainer.train()
    return trainer


class TestCometConformance(TrackerConformance):
    tracker_class = CometTracker
    # a resumed training is a second archive of the same experiment; comet_ml cannot drop the
    # points the interrupted run logged after its checkpoint, they are in the first archive
    purges_after_resume = False

    def make_tracker(self, tmp_path):
        return CometTracker(offline_directory=str(tmp_path / "comet"))

    def read_back(self, tracker, tmp_path):
        return read_experiments(tmp_path / "comet")


# -- discovery, mode, the offline notice --------------------------------------------------------


@pytest.mark.parametrize("delivery", ["process", "thread"])
def test_found_through_its_entry_point_and_offline_without_credentials(
    trackmux_env, caplog, delivery
):
    from trackmux.delivery_process import LOG_FILE
    from trackmux.runlog import find_runs

    assert_found(
        "comet_ml", distribution="trackmux-comet-ml", tracker_class=CometTracker, mode="offline"
    )

    with caplog.at_level(logging.INFO, logger="trackmux.comet_ml"):
        trainer = train(trackmux_env / "out", tracker_delivery=delivery)
    (archive,) = archives(trackmux_env / "out" / "comet")
    command = f"comet upload {archive}"
    assert dict(trainer.trackers.where())["comet_ml"] == command
    notice = (
        f"comet_ml: no Comet API key (COMET_API_KEY or `comet login`), logging offline to "
        f"{archive}; upload it after training with: {command}"
    )
    # in process mode said by the delivery process, and shown by the training process
    notices = [r.getMessage() for r in caplog.records if r.name == "trackmux.comet_ml"]
    assert notices == [notice]
    if delivery == "process":  # where it was said, too
        (run_dir,) = find_runs(trackmux_env / "out")
        log = Path(run_dir, LOG_FILE).read_text(encoding="utf-8")
        assert log.count(notice) == 1, log
    meta, _ = read_archive(archive)
    assert meta["project_name"] is None and meta["workspace"] is None


@pytest.mark.parametrize("source", ["api-key", "comet-config", "home-config", "dotenv"])
def test_credentials_make_the_mode_online(trackmux_env, monkeypatch, source):
    assert CometTracker.mode() == "offline"
    key = "0123456789abcdef"
    if source == "api-key":
        monkeypatch.setenv("COMET_API_KEY", key)
    elif source == "comet-config":
        (trackmux_env / "comet.ini").write_text(f"[comet]\napi_key = {key}\n")
        monkeypatch.setenv("COMET_CONFIG", str(trackmux_env / "comet.ini"))
    elif source == "home-config":
        # what `comet login` writes
        home = Path(os.environ["HOME"])
        home.mkdir(exist_ok=True)
        (home / ".comet.config").write_text(f"[comet]\napi_key = {key}\n")
    else:
        (trackmux_env / ".env").write_text(f"COMET_API_KEY={key}\n")
    assert CometTracker.mode() == "online"
    monkeypatch.setenv("COMET_MODE", "offline")
    assert CometTracker.mode() == "offline"


def test_comet_mode_offline_wins_over_an_api_key(trackmux_env, monkeypatch, caplog):
    monkeypatch.setenv("COMET_API_KEY", "0123456789abcdef")
    monkeypatch.setenv("COMET_MODE", "offline")
    tracker = CometTracker()
    with caplog.at_level(logging.INFO, logger="trackmux.comet_ml"):
        run_training(trackmux_env / "out", tracker, max_steps=2, eval_strategy="no")
    assert tracker.run_mode == "offline"
    assert "comet_ml: COMET_MODE=offline, logging offline to" in caplog.text
    data = read_experiments(trackmux_env / "out" / "comet")
    assert [step for step, _ in data.metrics["train/loss"]] == [2]


def test_online_without_credentials_is_refused_clearly(trackmux_env, monkeypatch):
    monkeypatch.setenv("COMET_MODE", "online")
    with pytest.raises(TrackerError, match="COMET_MODE=online needs an API key"):
        run_training(trackmux_env / "out", CometTracker(), max_steps=2, eval_strategy="no")
    assert not (trackmux_env / "out" / "comet").exists()


def test_a_mode_comet_does_not_know_is_refused(trackmux_env, monkeypatch):
    monkeypatch.setenv("COMET_MODE", "sometimes")
    with pytest.raises(ValueError, match="'sometimes' .* is not one of online, offline"):
        CometTracker().run_mode_setting()


@pytest.mark.parametrize("mode", ["get", "get_or_create", "create"])
def test_hugging_face_modes_leave_the_choice_to_the_credentials(trackmux_env, monkeypatch, mode):
    monkeypatch.setenv("COMET_MODE", mode)
    assert CometTracker().run_mode_setting() == "offline"
    monkeypatch.setenv("COMET_API_KEY", "0123456789abcdef")
    assert CometTracker().run_mode_setting() == "online"


def test_disabled_stays_out_of_all_and_logs_nothing_when_named(trackmux_env, monkeypatch):
    from trackmux.plugins import get_registry
    from trackmux.report_to import resolve

    monkeypatch.setenv("COMET_MODE", "disabled")
    skipped = dict(resolve("all", get_registry(refresh=True)).skipped)
    assert "COMET_MODE=disabled" in skipped["comet_ml"]
    train(trackmux_env / "out", max_steps=2, eval_strategy="no")
    assert not (trackmux_env / "out" / "comet").exists()
    assert [step for step, _ in jsonl_log(trackmux_env / "out").history("train/loss")] == [2]


# -- what is logged --------------------------------------------------------------------------


def test_params_are_the_run_config_exactly(trackmux_env):
    train(trackmux_env / "out")
    log = jsonl_log(trackmux_env / "out")
    data = read_experiments(trackmux_env / "out" / "comet")
    assert data.params == log.config
    assert data.params["learning_rate"] == 0.01
    assert data.params["model/hidden"] == 16
    sources = {
        p["param"]["source"]
        for p in messages(trackmux_env / "out" / "comet", "parameter_msg")
        if p["param"]["paramName"] not in COMET_PARAMS
    }
    assert sources == {"manual"}


def test_every_metric_at_its_global_step_and_epoch(trackmux_env):
    train(trackmux_env / "out")
    log = jsonl_log(trackmux_env / "out")
    logged = [p["metric"] for p in messages(trackmux_env / "out" / "comet", "metric_msg")]
    ours = [m for m in logged if m["metricName"] not in COMET_METRICS]
    # the epoch of each step, as the run log recorded it beside its metrics
    events = trackmux_env / "out" / "runs" / "conformance" / "events.jsonl"
    records = [json.loads(line) for line in events.read_text().splitlines()]
    epochs = {r["step"]: r["epoch"] for r in records if r["type"] == "metrics"}
    assert epochs[2] == 0.5 and epochs[8] == 2.0
    for name, history in log.metrics.items():
        stored = [
            (m["step"], m["metricValue"], m["epoch"]) for m in ours if m["metricName"] == name
        ]
        assert stored == [(step, value, epochs[step]) for step, value in history], name
    assert [m["step"] for m in ours if m["metricName"] == "eval/loss"] == [4, 8]
    # the end-of-training values, as metrics at the final step
    assert log.summary and "train/train_runtime" in log.summary
    for name, value in log.summary.items():
        assert [(m["step"], m["metricValue"]) for m in ours if m["metricName"] == name] == [
            (8, value)
        ], name
    assert {m["metricName"] for m in ours} == set(log.metrics) | set(log.summary)


def test_status_is_an_other(trackmux_env):
    train(trackmux_env / "out", max_steps=2, eval_strategy="no")
    others = dict(
        (p["key"], p["value"]) for p in messages(trackmux_env / "out" / "comet", "log_other")
    )
    assert others["status"] == "success"
    assert others["Name"] == "conformance"


@pytest.mark.parametrize("source", ["code", "environment", "default"])
def test_offline_directory_and_project_precedence(trackmux_env, monkeypatch, source):
    monkeypatch.setenv("HOME", str(trackmux_env))  # for "~" in COMET_OFFLINE_DIRECTORY
    if source != "default":
        monkeypatch.setenv("COMET_OFFLINE_DIRECTORY", "~/from-env")  # ~ is expanded
        monkeypatch.setenv("COMET_PROJECT_NAME", "env-project")
        monkeypatch.setenv("COMET_WORKSPACE", "env-space")
    config = None
    if source == "code":
        settings = {"offline_directory": str(trackmux_env / "from-code"), "project_name": "mine"}
        config = {"comet_ml": {**settings, "workspace": "my-space"}}
    train(trackmux_env / "out", tracker_config=config, max_steps=2, eval_strategy="no")
    directory, project, workspace = {
        "code": (trackmux_env / "from-code", "mine", "my-space"),
        "environment": (trackmux_env / "from-env", "env-project", "env-space"),
        "default": (trackmux_env / "out" / "comet", None, None),
    }[source]
    all_archives = sorted(trackmux_env.rglob("*.zip"))
    assert [path.parent for path in all_archives] == [directory]
    meta, _ = read_archive(all_archives[0])
    assert (meta["project_name"], meta["workspace"]) == (project, workspace)


# -- artifacts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, policy",
    [
        ("true", "checkpoint"),
        ("1", "checkpoint"),
        (True, "checkpoint"),
        ("false", "none"),
        ("end", "end"),
        ("best", "best"),
    ],
)
def test_comet_log_assets_maps_to_a_policy(trackmux_env, monkeypatch, value, policy):
    if isinstance(value, bool):
        assert CometTracker(artifacts=value).artifact_policy() == policy
    else:
        monkeypatch.setenv("COMET_LOG_ASSETS", value)
        assert CometTracker().artifact_policy() == policy


def test_comet_log_assets_rejects_a_word_it_does_not_know(trackmux_env, monkeypatch):
    monkeypatch.setenv("COMET_LOG_ASSETS", "sometimes")
    with pytest.raises(ValueError, match="COMET_LOG_ASSETS='sometimes'"):
        CometTracker().artifact_policy()


def test_comet_log_assets_stores_every_checkpoint(trackmux_env, monkeypatch):
    monkeypatch.setenv("COMET_LOG_ASSETS", "true")
    train(trackmux_env / "out")
    directory = trackmux_env / "out" / "comet"
    uploads = [p for p in messages(directory, "file_upload") if p["upload_type"] == "asset"]
    stored = {(p["additional_params"]["fileName"], p["additional_params"]["step"]) for p in uploads}
    for step in (4, 8):
        checkpoint = trackmux_env / "out" / f"checkpoint-{step}"
        expected = {
            (f"checkpoint-{step}/{path.relative_to(checkpoint).as_posix()}", step)
            for path in checkpoint.rglob("*")
            if path.is_file()
        }
        assert (f"checkpoint-{step}/model.safetensors", step) in expected
        assert expected <= stored
    # the files themselves are in the archive, as `comet upload` sends them
    (archive,) = archives(directory)
    with zipfile.ZipFile(archive) as opened:
        names = set(opened.namelist())
    assert {p["file_path"] for p in uploads} <= names


def test_no_assets_by_default(trackmux_env):
    train(trackmux_env / "out", max_steps=4, eval_strategy="no")
    assert messages(trackmux_env / "out" / "comet", "file_upload") == []


# -- resume and later sessions ------------------------------------------------------------


def test_resume_appends_an_archive_to_the_same_experiment(trackmux_env):
    from trackmux.testing import StopAt

    first = CometTracker()
    with pytest.raises(KeyboardInterrupt):
        run_training(trackmux_env / "out", first, callbacks=[StopAt(7, KeyboardInterrupt())])
    # configured elsewhere, the resumed run still writes beside the archive it continues
    resumed = CometTracker(offline_directory=str(trackmux_env / "elsewhere"))
    run_training(trackmux_env / "out", resumed, resume=True)

    directory = trackmux_env / "out" / "comet"
    assert resumed.experiment_key == first.experiment_key
    older, newer = archives(directory)
    assert older.name == f"{first.experiment_key}.zip"
    assert newer.name.startswith(f"{first.experiment_key}-")
    assert read_archive(newer)[0]["resume_strategy"] == "get"
    assert resumed.where() == f"comet upload {newer}"
    data = read_experiments(directory)
    assert data.runs == 1
    # step 6 was logged by the interrupted run after its step-4 checkpoint, and again
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 6, 8]
    statuses = [p["value"] for p in messages(directory, "log_other") if p["key"] == "status"]
    assert statuses == ["killed", "success"]
    assert not (trackmux_env / "elsewhere").exists()


def test_evaluate_after_train_continues_the_experiment(trackmux_env):
    trainer = train(trackmux_env / "out")
    trainer.evaluate()
    data = read_experiments(trackmux_env / "out" / "comet")
    assert data.runs == 1
    assert [step for step, _ in data.metrics["eval/loss"]] == [4, 8, 8]
    assert len(archives(trackmux_env / "out" / "comet")) == 2


def test_identity_names_the_experiment_and_its_directory(trackmux_env):
    tracker = CometTracker()
    identity = tracker.start(RunInfo(name="r", config={"lr": 0.1}, output_dir=str(trackmux_env)))
    tracker.finish("success")
    assert identity == {
        "experiment_key": tracker.experiment_key,
        "offline_directory": str(trackmux_env / "comet"),
    }
    assert read_experiments(trackmux_env / "comet").params == {"lr": 0.1}


# -- a fresh process: console, network, import cost --------------------------------------------

# Every socket connect and DNS lookup is recorded through audit hooks, in a process where
# neither the plugin nor comet_ml was imported before and COMET_ERROR_TRACKING_ENABLE is unset:
# the plugin must keep comet_ml from reaching out (Sentry) and from printing its warnings.
# Whether Sentry is on is asked of sentry_sdk's public API, not of a comet_ml internal
# (comet_ml 3.58's ``error_tracking.initialized()`` reads ``sentry_sdk.Hub``, which
# sentry-sdk 3 removed).
_FRESH_RUN = """
import json, os, random, sys
# comet_ml sets Sentry up on a random half of its imports (random.random() >= 0.5): always
# draw that half, so that only the plugin's setting can keep it off
random.random = lambda: 0.99
calls = []
def audit(event, args):
    if event in ("socket.connect", "socket.getaddrinfo"):
        calls.append([event, repr(args[1] if event == "socket.connect" else args[0])])
sys.addaudithook(audit)
from trackmux.testing import run_training
from trackmux_comet.tracker import CometTracker
run_training("out", CometTracker(), max_steps=2, eval_strategy="no")
import sentry_sdk
if hasattr(sentry_sdk, "get_client"):  # sentry-sdk 2 and 3
    sentry = sentry_sdk.get_client().is_active()
else:  # sentry-sdk 1
    sentry = sentry_sdk.Hub.current.client is not None
comet_env = sorted(name for name in os.environ if name.startswith("COMET_"))
print(json.dumps({
    "comet_ml": "comet_ml" in sys.modules, "calls": calls, "sentry": sentry, "env": comet_env
}))
"""


def test_a_fresh_offline_run_is_silent_and_makes_no_network_call(tmp_path):
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("COMET_", "TRACKMUX_"))
    }
    env.update(HOME=str(tmp_path), TRACKMUX_STRICT="1")
    result = run_child([sys.executable, "-c", _FRESH_RUN], timeout=300, cwd=tmp_path, env=env)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # comet_ml ran, with no Sentry client bound and no network call, and the variables the
    # plugin set for comet_ml's import are gone again
    expected = {"comet_ml": True, "calls": [], "sentry": False, "env": []}
    assert report == expected, describe_child(result)
    comet_lines = [line for line in result.stderr.splitlines() if line.startswith("COMET ")]
    assert comet_lines == [], describe_child(result)
    # the one line that names the archive, and the archive holds the run
    (archive,) = (tmp_path / "out" / "comet").glob("*.zip")
    notices = [line for line in result.stderr.splitlines() if line.startswith("comet_ml:")]
    assert len(notices) == 1, describe_child(result)
    assert notices[0].endswith(f"comet upload {archive}"), describe_child(result)
    data = read_experiments(tmp_path / "out" / "comet")
    assert [step for step, _ in data.metrics["train/loss"]] == [2]
    assert data.status == "success"


def test_import_and_discovery_load_neither_comet_ml_nor_torch(tmp_path):
    env = {name: value for name, value in os.environ.items() if not name.startswith("COMET_")}
    env["HOME"] = str(tmp_path)
    report = discovery_report(
        "comet_ml", "trackmux_comet", ("torch", "comet_ml"), env=env, cwd=tmp_path
    )
    assert (report["available"], report["mode"], report["heavy"]) == (True, "offline", [])


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", "backend missing: comet_ml is not installed"),
        ("too-old", "unsupported backend: comet_ml 3.40.0 is installed, comet_ml>=3.43.2"),
    ],
    ids=["missing", "too-old"],
)
def test_reports_itself_unavailable_without_a_usable_comet_ml(case, reason):
    version = None if case == "missing" else "3.40.0"
    fix = 'pip install "comet_ml>=3.43.2"'
    assert_unavailable("comet_ml", "comet_ml", "comet_ml", version=version, reason=reason, fix=fix)
