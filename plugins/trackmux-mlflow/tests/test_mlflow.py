"""trackmux-mlflow against a real MLflow: a loopback ``mlflow server`` and a local sqlite store,
everything read back with ``MlflowClient``."""

from __future__ import annotations

import json
import logging
import re
import shutil
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from trackmux.testing import (
    RunData,
    TrackerConformance,
    describe_child,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux.testing.conformance import TRAINING_DEFAULTS
from trackmux.tracker import RunInfo
from trackmux_mlflow.tracker import MlflowTracker

STATUS = {"FINISHED": "success", "FAILED": "failed", "KILLED": "killed", "RUNNING": None}
PLUGIN_ENV = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_NESTED_RUN",
    "MLFLOW_TAGS",
    "MLFLOW_MAX_LOG_PARAMS",
    "HF_MLFLOW_LOG_ARTIFACTS",
    "DISABLE_MLFLOW_INTEGRATION",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def default_store(trackmux_env, empty_store):
    """The default store ``<output_dir>/mlflow.db``, already created: a copy of an empty one
    saves ~5 s of schema creation. Tests of the plugin creating it do without."""
    store = trackmux_env / "out" / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(empty_store, store)
    return store


def read_run(uri: str, run_id: str) -> RunData:
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    metrics = {}
    for key in run.data.metrics:
        history = sorted(
            client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
        )
        metrics[key] = [(m.step, m.value) for m in history]
    runs = client.search_runs([run.info.experiment_id])
    return RunData(
        params=dict(run.data.params),
        metrics=metrics,
        status=STATUS[run.info.status],
        runs=len(runs),
    )


def train(output_dir, tracker=None, hyperparameters=None, evaluate=False, **overrides):
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing import RegressionDataset, TinyRegressor

    arguments = {**TRAINING_DEFAULTS, "output_dir": str(output_dir), **overrides}
    trainer = Trainer(
        model=TinyRegressor(),
        args=TrainingArguments(**arguments),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        trackers=[tracker] if tracker is not None else None,
        hyperparameters=hyperparameters or {},
    )
    trainer.train()
    if evaluate:
        trainer.evaluate()
    return trainer


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- the conformance suite, twice --------------------------------------------------------


class TestConformanceServer(TrackerConformance):
    """Over HTTP to the real server: one experiment per test, so counting runs is exact."""

    tracker_class = MlflowTracker
    params_as_strings = True

    @pytest.fixture(autouse=True)
    def _server(self, mlflow_server):
        self.url = mlflow_server

    def make_tracker(self, tmp_path):
        return MlflowTracker(tracking_uri=self.url, experiment_name=f"conformance-{tmp_path.name}")

    def read_back(self, tracker, tmp_path):
        assert tracker.tracking_uri == self.url
        return read_run(self.url, tracker.run_id)


@pytest.mark.usefixtures("default_store")
class TestConformanceLocalStore(TrackerConformance):
    """No URI anywhere: the default store, ``sqlite:///<output_dir>/mlflow.db``."""

    tracker_class = MlflowTracker
    params_as_strings = True

    def make_tracker(self, tmp_path):
        return MlflowTracker()

    def read_back(self, tracker, tmp_path):
        uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
        assert tracker.tracking_uri == uri
        return read_run(uri, tracker.run_id)


# -- configuration ---------------------------------------------------------------------------


def test_env_sets_experiment_tags_and_uri_through_report_to(
    trackmux_env, mlflow_server, monkeypatch
):
    experiment = unique("from-env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.setenv("MLFLOW_TAGS", json.dumps({"team": "vision", "ticket@id": 42}))
    trainer = train(trackmux_env / "out", report_to=["jsonl", "mlflow"])

    identity = trainer.state.tracker_runs["mlflow"]
    assert identity["tracking_uri"] == mlflow_server
    client = MlflowClient(mlflow_server)
    run = client.get_run(identity["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.tags["team"] == "vision"
    assert run.data.tags["ticket_id"] == "42"
    assert run.info.run_name == "conformance"
    assert run.info.status == "FINISHED"
    where = dict(trainer.trackers.where())["mlflow"]
    assert where.startswith(mlflow_server) and identity["run_id"] in where
    assert MlflowTracker.mode() == "online"


def test_tracking_uri_setting_beats_env_beats_default(trackmux_env, monkeypatch, empty_store):
    out = trackmux_env / "out"
    env_uri = f"sqlite:///{trackmux_env / 'env.db'}"
    setting_uri = f"sqlite:///{trackmux_env / 'setting.db'}"
    shutil.copyfile(empty_store, trackmux_env / "env.db")
    shutil.copyfile(empty_store, trackmux_env / "setting.db")

    def run_once(tracker):
        tracker.start(RunInfo(name="uri", config={"a": 1}, output_dir=str(out)))
        tracker.finish("success")
        assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).data.params == {"a": "1"}
        return tracker

    assert run_once(MlflowTracker()).tracking_uri == f"sqlite:///{out / 'mlflow.db'}"
    assert (out / "mlflow.db").is_file()
    assert MlflowTracker.mode() == "local"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert run_once(MlflowTracker()).tracking_uri == env_uri
    tracker = run_once(MlflowTracker(tracking_uri=setting_uri))
    assert tracker.tracking_uri == setting_uri
    assert tracker.where() == f"run {tracker.run_id}: mlflow ui --backend-store-uri {setting_uri}"


@pytest.mark.parametrize(
    "uri, mode",
    [
        ("", "local"),
        ("sqlite:///out/mlflow.db", "local"),
        ("/data/mlruns", "local"),
        ("file:///data/mlruns", "local"),
        ("https://mlflow.example.com", "online"),
        ("databricks", "online"),
        ("postgresql://db.example.com/mlflow", "online"),
    ],
)
def test_mode_follows_the_tracking_uri(monkeypatch, uri, mode):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert MlflowTracker.mode() == mode


def test_bad_mlflow_tags_are_refused_clearly(trackmux_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TAGS", "team=vision")
    with pytest.raises(ValueError, match="MLFLOW_TAGS is not valid JSON"):
        MlflowTracker().start(RunInfo(name="x", config={}, output_dir=str(trackmux_env)))


def test_disable_mlflow_integration_keeps_it_out_of_all(monkeypatch):
    from trackmux.plugins import PluginRegistry
    from trackmux.report_to import resolve

    registry = PluginRegistry()
    registry.add_tracker(MlflowTracker)
    assert [info.name for info in resolve("all", registry).chosen] == ["mlflow"]
    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    skipped = dict(resolve("all", registry).skipped)
    assert "DISABLE_MLFLOW_INTEGRATION" in skipped["mlflow"]
    # named explicitly, it still runs
    assert [info.name for info in resolve(["mlflow"], registry).chosen] == ["mlflow"]


# -- which run ---------------------------------------------------------------------------------


def test_mlflow_run_id_reattaches_to_that_run(trackmux_env, mlflow_server, monkeypatch):
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(unique("reattach"))
    given = client.create_run(experiment_id, run_name="made-before").info.run_id
    client.set_terminated(given, "FINISHED")
    monkeypatch.setenv("MLFLOW_RUN_ID", given)
    tracker = MlflowTracker(tracking_uri=mlflow_server)
    train(trackmux_env / "out", tracker)

    assert tracker.run_id == given
    data = read_run(mlflow_server, given)
    assert data.runs == 1 and data.status == "success"
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 8]
    assert client.get_run(given).info.run_name == "made-before"


def test_nested_run_under_the_users_active_run(trackmux_env, mlflow_server, monkeypatch):
    import mlflow

    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(unique("nested"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_NESTED_RUN", "true")
    with mlflow.start_run(experiment_id=experiment_id, run_name="parent") as parent:
        tracker = MlflowTracker()
        train(trackmux_env / "out", tracker)
        parent_run = client.get_run(parent.info.run_id)
        assert parent_run.info.status == "RUNNING" and parent_run.info.end_time is None
        assert parent_run.data.metrics == {}
        assert mlflow.active_run().info.run_id == parent.info.run_id

    assert tracker.run_id != parent.info.run_id
    child = client.get_run(tracker.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.status == "FINISHED"
    assert [step for step, _ in read_run(mlflow_server, tracker.run_id).metrics["train/loss"]] == [
        2,
        4,
        6,
        8,
    ]
    # the parent was ended by its owner, not by the plugin
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"


def test_logs_into_the_users_active_run_and_leaves_it_open(
    trackmux_env, mlflow_server, monkeypatch
):
    import mlflow

    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(unique("user-run"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    with mlflow.start_run(experiment_id=experiment_id, run_name="mine") as mine:
        tracker = MlflowTracker()
        train(trackmux_env / "out", tracker, evaluate=True)
        assert tracker.run_id == mine.info.run_id
        data = read_run(mlflow_server, mine.info.run_id)
        assert data.runs == 1
        assert client.get_run(mine.info.run_id).info.status == "RUNNING"
        assert data.params["learning_rate"] == "0.01"
        assert [step for step, _ in data.metrics["eval/loss"]] == [4, 8, 8]


def test_evaluate_after_train_lands_in_the_same_run(trackmux_env, mlflow_server):
    tracker = MlflowTracker(tracking_uri=mlflow_server, experiment_name=unique("evaluate"))
    train(trackmux_env / "out", tracker, evaluate=True)
    data = read_run(mlflow_server, tracker.run_id)
    assert data.runs == 1
    assert data.status == "success"
    # eval at steps 4 and 8 during training, then evaluate() at the final step
    assert [step for step, _ in data.metrics["eval/loss"]] == [4, 8, 8]


def test_resumed_run_keeps_params_mlflow_cannot_change(trackmux_env, default_store, caplog):
    out = str(trackmux_env / "out")
    first = MlflowTracker()
    identity = first.start(RunInfo(name="r", config={"lr": 0.1}, output_dir=out))
    first.finish("killed")
    again = MlflowTracker()
    with caplog.at_level(logging.WARNING, logger="trackmux_mlflow"):
        again.start(
            RunInfo(name="r", config={"lr": 0.2, "new": 1}, output_dir=out, resume=identity)
        )
    again.finish("success")
    assert again.run_id == first.run_id
    data = read_run(identity["tracking_uri"], again.run_id)
    assert data.params == {"lr": "0.1", "new": "1"}
    assert data.status == "success" and data.runs == 1
    assert "keeps its earlier value of 1 param(s)" in caplog.text and "lr" in caplog.text


# -- params and names ------------------------------------------------------------------------


def test_long_value_and_odd_key_are_cut_and_renamed(trackmux_env, mlflow_server, caplog):
    tracker = MlflowTracker(tracking_uri=mlflow_server, experiment_name=unique("limits"))
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        train(
            trackmux_env / "out",
            tracker,
            hyperparameters={"id2label": "x" * 7000, "acc@1": 3, "a//b": "c"},
        )
    params = read_run(mlflow_server, tracker.run_id).params
    assert params["id2label"] == "x" * 6000
    assert params["acc_1"] == "3"
    assert params["a/b"] == "c"
    assert "cut" in caplog.text and "id2label" in caplog.text


def test_metric_names_are_sanitized(trackmux_env, default_store):
    def odd_names(prediction):
        return {"acc@1": 0.5, "/f1": 0.25, "x" * 300: 1.0}

    tracker = MlflowTracker()
    run_training(trackmux_env / "out", tracker, trainer_kwargs={"compute_metrics": odd_names})
    metrics = read_run(tracker.tracking_uri, tracker.run_id).metrics
    # eval_acc@1 -> eval/acc@1 (trackmux's namespacing) -> eval/acc_1 (MLflow's characters)
    assert metrics["eval/acc_1"] == [(4, 0.5), (8, 0.5)]
    assert metrics["eval/f1"] == [(4, 0.25), (8, 0.25)]
    # cut to MLflow's 250 characters by trackmux, with a hash of the whole name at the end
    (long,) = [name for name in metrics if name.startswith("eval/xxx")]
    assert len(long) == 250 and re.fullmatch(r"eval/x+_[0-9a-f]{8}", long), long
    assert metrics[long] == [(4, 1.0), (8, 1.0)]


def test_more_than_100_params_arrive(trackmux_env, mlflow_server):
    tracker = MlflowTracker(tracking_uri=mlflow_server, experiment_name=unique("many"))
    extra = {f"extra_{index:03d}": index for index in range(250)}
    train(trackmux_env / "out", tracker, hyperparameters=extra)
    params = read_run(mlflow_server, tracker.run_id).params
    assert {key: params[key] for key in extra} == {key: str(value) for key, value in extra.items()}
    # every param the run log holds, nested ones joined with "." instead of "/"
    assert len(params) == len(jsonl_log(trackmux_env / "out").config) > 290
    assert params["model.hidden"] == "16"


# -- artifacts ----------------------------------------------------------------------------------


def test_checkpoint_policy_uploads_each_checkpoint(trackmux_env, mlflow_server, monkeypatch):
    tracker = MlflowTracker(
        tracking_uri=mlflow_server, experiment_name=unique("ckpt"), artifacts="checkpoint"
    )
    train(trackmux_env / "out", tracker)
    # only now: mlflow < 3.7 lists proxied artifacts through the global URI, which the plugin
    # must do without when it uploads
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client = MlflowClient(mlflow_server)
    top = {entry.path for entry in client.list_artifacts(tracker.run_id)}
    assert top == {"checkpoint-4", "checkpoint-8"}
    inside = {entry.path for entry in client.list_artifacts(tracker.run_id, "checkpoint-8")}
    assert "checkpoint-8/model.safetensors" in inside
    assert "checkpoint-8/trainer_state.json" in inside


def test_hf_log_artifacts_uploads_the_final_model(trackmux_env, monkeypatch):
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "true")
    tracker = MlflowTracker()
    train(trackmux_env / "out", tracker)
    client = MlflowClient(tracker.tracking_uri)
    assert [entry.path for entry in client.list_artifacts(tracker.run_id)] == ["model"]
    inside = {entry.path for entry in client.list_artifacts(tracker.run_id, "model")}
    assert "model/model.safetensors" in inside
    # the default store keeps its artifacts under the output dir, not in the CWD (mlflow 2
    # still makes an empty ./mlruns there)
    stored = trackmux_env / "out" / "mlartifacts"
    assert list(stored.glob(f"*/{tracker.run_id}/artifacts/model/model.safetensors"))
    assert not list(trackmux_env.glob("mlruns/**/*.safetensors"))


# -- import cost -------------------------------------------------------------------------------


def test_discovery_does_not_import_mlflow():
    code = (
        "import sys, trackmux_mlflow\n"
        "from trackmux.plugins import get_registry\n"
        "info = get_registry().get('mlflow')\n"
        "assert info.available and info.distribution == 'trackmux-mlflow', info\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow'))\n"
    )
    result = run_child([sys.executable, "-c", code], timeout=120)
    assert result.stdout.strip() == "[]", describe_child(result)


# -- a checkpoint is data, not instructions (issue 15, row 1) ---------------------------------


@pytest.mark.parametrize("other", ["sqlite-store", "http-with-password"])
def test_checkpoint_naming_another_store_opens_a_new_run_in_the_configured_one(
    trackmux_env, mlflow_server, empty_store, caplog, capfd, other
):
    from trackmux_mlflow.testing import free_port

    out = trackmux_env / "out"
    experiment = unique("foreign")
    first = MlflowTracker(tracking_uri=mlflow_server, experiment_name=experiment)
    run_training(out, first)
    checkpoint = out / "checkpoint-4"
    state_file = checkpoint / "trackmux_state.json"  # the trackers' run identities
    state = json.loads(state_file.read_text())
    assert state["tracker_runs"]["mlflow"]["run_id"] == first.run_id

    if other == "sqlite-store":
        # another real store, holding a run the edited checkpoint names
        foreign_db = trackmux_env / "foreign" / "mlflow.db"
        foreign_db.parent.mkdir()
        shutil.copyfile(empty_store, foreign_db)
        foreign_uri = f"sqlite:///{foreign_db}"
        foreign_run = MlflowClient(foreign_uri).create_run("0", run_name="foreign").info.run_id
    else:
        # credentials in the URI: never printed; nothing listens there
        foreign_uri = f"http://alice:PASSWORD@127.0.0.1:{free_port()}"
        foreign_run = first.run_id
    state["tracker_runs"]["mlflow"] = {
        "run_id": foreign_run,
        "tracking_uri": foreign_uri,
        "experiment_id": "0",
    }
    state_file.write_text(json.dumps(state))
    capfd.readouterr()

    resumed = MlflowTracker(tracking_uri=mlflow_server, experiment_name=experiment)
    with caplog.at_level(logging.INFO):
        run_training(out, resumed, resume=str(checkpoint))
    printed = capfd.readouterr()

    # a new run in the configured server; the first run untouched
    assert resumed.tracking_uri == mlflow_server
    assert resumed.run_id not in (first.run_id, foreign_run)
    data = read_run(mlflow_server, resumed.run_id)
    assert data.status == "success" and data.runs == 2
    assert [step for step, _ in data.metrics["train/loss"]] == [6, 8]
    before = read_run(mlflow_server, first.run_id)
    assert before.status == "success"
    assert [step for step, _ in before.metrics["train/loss"]] == [2, 4, 6, 8]
    if other == "sqlite-store":
        # nothing sent to the store the checkpoint named
        client = MlflowClient(foreign_uri)
        (only,) = client.search_runs(["0"])
        assert only.info.run_id == foreign_run
        assert only.data.metrics == {} and only.data.params == {}
        assert only.info.status == "RUNNING"

    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1
    assert "'mlflow'" in refused[0] and "tracking_uri" in refused[0]
    assert foreign_uri.replace("alice:PASSWORD@", "***@") in refused[0]
    for text in (caplog.text, printed.out, printed.err):
        assert "PASSWORD" not in text


def test_checkpoint_resume_in_the_configured_server_continues_the_run(
    trackmux_env, mlflow_server, caplog
):
    """The counterpart: the checkpoint names the configured server (userinfo aside)."""
    out = trackmux_env / "out"
    experiment = unique("same-store")
    first = MlflowTracker(tracking_uri=mlflow_server, experiment_name=experiment)
    run_training(out, first)
    resumed = MlflowTracker(
        tracking_uri=mlflow_server.replace("http://", "http://alice:PASSWORD@"),
        experiment_name=experiment,
    )
    with caplog.at_level(logging.WARNING):
        run_training(out, resumed, resume=str(out / "checkpoint-4"))
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    assert resumed.run_id == first.run_id
    data = read_run(mlflow_server, first.run_id)
    assert data.runs == 1 and data.status == "success"
    # (MLflow cannot drop points: steps 6 and 8 come twice, the first run's and the resumed)
    assert {step for step, _ in data.metrics["train/loss"]} == {2, 4, 6, 8}


def test_a_password_in_the_tracking_uri_is_never_written_or_printed(
    trackmux_env, mlflow_server, capfd, caplog
):
    """Issue 15, row 3, against a real server: the URI's password reaches neither a file under
    output_dir (checkpoints, the journal), nor trackmux's log, nor MLflow's own "View run"
    line, which trackmux prints redacted; the run itself is stored as usual."""
    uri = mlflow_server.replace("http://", "http://alice:PASSWORD@")
    out = trackmux_env / "out"
    tracker = MlflowTracker(tracking_uri=uri, experiment_name=unique("userinfo"))
    with caplog.at_level(logging.INFO):
        run_training(out, tracker)
    printed = capfd.readouterr()
    shown = printed.out + printed.err + caplog.text
    assert "View run" in shown  # MLflow's line is there, redacted
    assert "PASSWORD" not in shown
    for path in out.rglob("*"):
        if path.is_file():
            assert b"PASSWORD" not in path.read_bytes(), path
    state = json.loads((out / "checkpoint-8" / "trackmux_state.json").read_text())
    assert state["tracker_runs"]["mlflow"]["run_id"] == tracker.run_id
    data = read_run(mlflow_server, tracker.run_id)
    assert data.status == "success"
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 8]


@pytest.mark.parametrize("backend_output", [False, True])
def test_mlflow_chatter_only_when_asked_for(trackmux_env, monkeypatch, capfd, backend_output):
    """Creating a store prints MLflow's INFO lines ("Creating initial MLflow database
    tables..."): kept quiet unless TRACKMUX_BACKEND_OUTPUT asks for the backend's output."""
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.INFO)
    if backend_output:
        monkeypatch.setenv("TRACKMUX_BACKEND_OUTPUT", "1")
    trainer = run_training("out", report_to=["mlflow"], max_steps=2)
    captured = capfd.readouterr()
    chatter = "Creating initial MLflow database tables" in captured.out + captured.err
    assert chatter == backend_output
    assert trainer.trackers.where()[1][1].startswith("run ")
