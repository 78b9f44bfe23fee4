"""trackmux-azure-ml outside an Azure ML job (inactive, training unharmed) and inside a
simulated one: the job's variables set as Azure ML sets them, its MLflow endpoint a real
``mlflow server`` on 127.0.0.1, and everything read back with ``MlflowClient``. Azure itself
is never contacted (the ``loopback_only`` guard of conftest.py refuses any other host)."""

from __future__ import annotations

import logging
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
from trackmux_azureml.tracker import AzureMLTracker

AZURE_URI = (
    "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/00000000-0000-0000-0000-000000000000"
    "/resourceGroups/rg/providers/Microsoft.MachineLearningServices/workspaces/ws"
)
JOB_ENV = (
    "AZUREML_RUN_ID",
    "AZUREML_ARM_SUBSCRIPTION",
    "AZUREML_ARM_RESOURCEGROUP",
    "AZUREML_ARM_WORKSPACE_NAME",
    "AZUREML_ARM_PROJECT_NAME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_MAX_LOG_PARAMS",
    "HF_MLFLOW_LOG_ARTIFACTS",
    "DISABLE_MLFLOW_INTEGRATION",
)


@pytest.fixture(autouse=True)
def _no_job(monkeypatch):
    for name in JOB_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def job(trackmux_env, mlflow_server, monkeypatch):
    """A simulated Azure ML job: its run already exists and is RUNNING, as Azure ML starts it
    before the script; the variables are those Azure ML sets (after trackmux_env, which clears
    MLflow's). Returns the job's run id."""
    client = MlflowClient(mlflow_server)
    experiment = f"job-{uuid.uuid4().hex[:8]}"
    run_id = client.create_run(client.create_experiment(experiment), run_name="job").info.run_id
    for name, value in {
        "AZUREML_RUN_ID": run_id,
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000000",
        "AZUREML_ARM_RESOURCEGROUP": "rg",
        "AZUREML_ARM_WORKSPACE_NAME": "ws",
        "AZUREML_ARM_PROJECT_NAME": experiment,
    }.items():
        monkeypatch.setenv(name, value)
    return run_id


def read_run(uri: str, run_id: str) -> RunData:
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    metrics = {}
    for key in run.data.metrics:
        history = sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        metrics[key] = [(m.step, m.value) for m in history]
    status = {"FINISHED": "success", "FAILED": "failed", "KILLED": "killed"}
    return RunData(
        params=dict(run.data.params),
        metrics=metrics,
        status=status.get(run.info.status),  # RUNNING: the job's run, ended by Azure ML
        runs=len(client.search_runs([run.info.experiment_id])),
    )


def assert_job_run_open(uri: str, run_id: str) -> None:
    info = MlflowClient(uri).get_run(run_id).info
    assert info.status == "RUNNING" and info.end_time is None


def train_with_params(output_dir, tracker, hyperparameters):
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing import RegressionDataset, TinyRegressor
    from trackmux.testing.conformance import TRAINING_DEFAULTS

    trainer = Trainer(
        model=TinyRegressor(),
        args=TrainingArguments(**{**TRAINING_DEFAULTS, "output_dir": str(output_dir)}),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        trackers=[tracker],
        hyperparameters=hyperparameters,
    )
    trainer.train()


# -- inside a (simulated) job: the conformance suite ------------------------------------------


class TestConformanceInJob(TrackerConformance):
    tracker_class = AzureMLTracker
    params_as_strings = True

    @pytest.fixture(autouse=True)
    def _job(self, job, mlflow_server):
        self.url, self.job_run = mlflow_server, job

    def make_tracker(self, tmp_path):
        # the final model (uploaded by default) is checked once, below, not in every run
        return AzureMLTracker(artifacts="none")

    def read_back(self, tracker, tmp_path):
        assert tracker.tracking_uri == self.url and not tracker.tracking_uri.startswith("azureml")
        assert tracker.run_id == self.job_run
        assert_job_run_open(self.url, self.job_run)
        return read_run(self.url, self.job_run)


# -- inside a job ------------------------------------------------------------------------------


def test_job_run_gets_params_metrics_once_and_the_final_model(trackmux_env, job, mlflow_server):
    trainer = run_training(trackmux_env / "out", report_to=["jsonl", "azure_ml"])

    identity = trainer.state.tracker_runs["azure_ml"]
    assert identity["run_id"] == job and identity["tracking_uri"] == mlflow_server
    data = read_run(mlflow_server, job)
    log = jsonl_log(trackmux_env / "out")
    # every value exactly once, at its step: nothing else reported into the job's run
    assert data.metrics["train/loss"] == log.history("train/loss")
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 8]
    assert data.metrics["eval/loss"] == log.history("eval/loss")
    assert set(data.metrics) == set(log.metrics) | set(log.summary)
    for name, value in log.summary.items():
        assert data.metrics[name] == [(8, value)], name
    assert data.params["learning_rate"] == "0.01" and data.params["dataset"] == "toy-regression"
    # the final model, by default
    client = MlflowClient(mlflow_server)
    assert [entry.path for entry in client.list_artifacts(job)] == ["model"]
    inside = {entry.path for entry in client.list_artifacts(job, "model")}
    assert "model/model.safetensors" in inside
    # the job's run is Azure ML's to end
    assert_job_run_open(mlflow_server, job)
    assert data.runs == 1
    where = dict(trainer.trackers.where())["azure_ml"]
    assert where == (
        f"https://ml.azure.com/runs/{job}?wsid=/subscriptions/00000000-0000-0000-0000-000000000000"
        "/resourcegroups/rg/workspaces/ws"
    )
    assert AzureMLTracker.mode() == "online"


def test_logs_into_the_users_active_run_of_the_job(trackmux_env, job, mlflow_server):
    import mlflow

    # inside a job, mlflow.start_run() continues the job's run (MLFLOW_RUN_ID)
    with mlflow.start_run() as mine:
        assert mine.info.run_id == job
        tracker = AzureMLTracker(artifacts="none")
        run_training(trackmux_env / "out", tracker)
        assert tracker.run_id == job
        assert mlflow.active_run().info.run_id == job
        assert_job_run_open(mlflow_server, job)
    assert [s for s, _ in read_run(mlflow_server, job).metrics["train/loss"]] == [2, 4, 6, 8]


def test_artifacts_setting_still_wins_inside_a_job(trackmux_env, job, mlflow_server, monkeypatch):
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "false")
    run_training(trackmux_env / "out", AzureMLTracker())
    assert MlflowClient(mlflow_server).list_artifacts(job) == []
    assert not (trackmux_env / "out" / "final-model").exists()


def test_params_are_capped_at_azures_limit_with_one_warning(
    trackmux_env, job, mlflow_server, caplog
):
    extra = {f"extra_{index:03d}": index for index in range(250)}
    with caplog.at_level(logging.WARNING, logger="trackmux_azureml"):
        train_with_params(trackmux_env / "out", AzureMLTracker(), extra)
    params = read_run(mlflow_server, job).params
    assert len(params) == 100
    # the user's hyperparameters and the model's config go first, TrainingArguments after
    from trackmux import TrainingArguments

    assert not set(params) & set(TrainingArguments.__dataclass_fields__)
    assert params["extra_000"] == "0" and params["model.hidden"] == "16"
    warnings = [r for r in caplog.records if "params" in r.getMessage()]
    assert len(warnings) == 1 and "logging 100 of" in warnings[0].getMessage()


def test_mlflow_max_log_params_sets_the_cap(trackmux_env, job, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_MAX_LOG_PARAMS", "20")
    run_training(trackmux_env / "out", AzureMLTracker())
    assert len(read_run(mlflow_server, job).params) == 20


def test_report_to_all_in_a_job_logs_once_through_mlflow(trackmux_env, job, mlflow_server):
    from trackmux.plugins import get_registry
    from trackmux.report_to import resolve

    skipped = dict(resolve("all", get_registry()).skipped)
    assert "mlflow tracker already logs into this Azure ML job's run" in skipped["azure_ml"]
    run_training(trackmux_env / "out", report_to="all")
    data = read_run(mlflow_server, job)
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in data.metrics["eval/loss"]] == [4, 8]


def test_naming_both_mlflow_and_azure_ml_still_logs_once(trackmux_env, job, mlflow_server, caplog):
    with caplog.at_level(logging.WARNING, logger="trackmux_azureml"):
        trainer = run_training(trackmux_env / "out", report_to=["jsonl", "mlflow", "azure_ml"])
    data = read_run(mlflow_server, job)
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 8]
    assert "the mlflow tracker also reports to this job's run" in caplog.text
    assert dict(trainer.trackers.where())["azure_ml"].startswith("inactive: the mlflow tracker")


def test_disable_mlflow_integration_lets_all_choose_azure_ml(trackmux_env, job, monkeypatch):
    from trackmux.plugins import get_registry
    from trackmux.report_to import resolve

    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    assert "azure_ml" in [info.name for info in resolve("all", get_registry()).chosen]


# -- outside a job -------------------------------------------------------------------------------


def test_outside_a_job_report_to_all_skips_it_with_the_reason(trackmux_env, monkeypatch):
    from trackmux.plugins import get_registry
    from trackmux.report_to import resolve

    monkeypatch.setenv("MLFLOW_TRACKING_URI", AZURE_URI)
    registry = get_registry()
    assert registry.get("azure_ml").distribution == "trackmux-azure-ml"
    selection = resolve("all", registry)
    assert "azure_ml" not in [info.name for info in selection.chosen]
    reason = dict(selection.skipped)["azure_ml"]
    assert "not inside an Azure ML job (AZUREML_RUN_ID is not set)" in reason
    assert "azure_ml (not configured: not inside an Azure ML job" in selection.summary()
    assert AzureMLTracker.mode() == "offline"


def test_named_outside_a_job_it_warns_once_and_training_goes_on(
    trackmux_env, monkeypatch, caplog, loopback_only
):
    # an azureml:// URI alone (a laptop configured for a workspace) is not a job: contacting
    # Azure from here would walk its credential chain, so nothing may be tried
    monkeypatch.setenv("MLFLOW_TRACKING_URI", AZURE_URI)
    with caplog.at_level(logging.WARNING, logger="trackmux_azureml"):
        trainer = run_training(trackmux_env / "out", report_to=["jsonl", "azure_ml"])
        trainer.evaluate()
    warnings = [r.getMessage() for r in caplog.records if r.name.startswith("trackmux_azureml")]
    assert warnings == [
        "azure_ml: inactive, logging nothing: not inside an Azure ML job (AZUREML_RUN_ID is not "
        "set); outside a job, use report_to='mlflow' with MLFLOW_TRACKING_URI"
    ]
    tracker = next(t for t in trainer.trackers.trackers if t.name == "azure_ml")
    assert tracker.client is None and tracker.run_id is None
    assert "azure_ml" not in trainer.state.tracker_runs
    assert dict(trainer.trackers.where())["azure_ml"].startswith("inactive: not inside")
    # training itself was complete, and no final model was saved for nobody
    assert [step for step, _ in jsonl_log(trackmux_env / "out").history("train/loss")] == [
        2,
        4,
        6,
        8,
    ]
    assert not (trackmux_env / "out" / "final-model").exists()
    assert loopback_only == []


def test_job_without_an_mlflow_uri_is_inactive_and_says_why(trackmux_env, monkeypatch, caplog):
    monkeypatch.setenv("AZUREML_RUN_ID", "job_1234")
    reason = AzureMLTracker.unconfigured_reason()
    assert reason.startswith("AZUREML_RUN_ID is set but MLFLOW_TRACKING_URI is not")
    with caplog.at_level(logging.WARNING, logger="trackmux_azureml"):
        run_training(trackmux_env / "out", AzureMLTracker())
    assert reason in caplog.text


def test_start_called_on_its_own_outside_a_job_does_nothing(trackmux_env):
    from trackmux.tracker import RunInfo

    tracker = AzureMLTracker()
    assert tracker.start(RunInfo(name="x", config={"a": 1}, output_dir=str(trackmux_env))) is None
    tracker.log_metrics({"train/loss": 1.0}, step=1)
    tracker.finish("success")
    assert tracker.client is None and list(trackmux_env.iterdir()) == []


# -- import cost ---------------------------------------------------------------------------------


def test_discovery_imports_neither_mlflow_nor_azureml():
    code = (
        "import sys, trackmux_azureml\n"
        "from trackmux.plugins import get_registry\n"
        "info = get_registry().get('azure_ml')\n"
        "assert info.available and info.distribution == 'trackmux-azure-ml', info\n"
        "assert info.tracker_class.unconfigured_reason()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'azureml')))\n"
    )
    result = run_child([sys.executable, "-c", code], timeout=120)
    assert result.stdout.strip() == "[]", describe_child(result)
