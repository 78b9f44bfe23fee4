"""trackmux-dagshub against a real MLflow server standing in for a DagsHub repository's (same
URL path, basic auth with the owner and the token), everything read back with ``MlflowClient``."""

from __future__ import annotations

import ntpath
import os
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from trackmux.delivery import TrackerError
from trackmux.testing import (
    RunData,
    TrackerConformance,
    describe_child,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux_dagshub.tracker import (
    BRANCH_TAG,
    DagsHubConfigError,
    DagsHubTracker,
    repo_from_tracking_uri,
    split_repo,
    tracking_uri,
)

STATUS = {"FINISHED": "success", "FAILED": "failed", "KILLED": "killed", "RUNNING": None}
PLUGIN_ENV = (
    "DAGSHUB_USER_TOKEN",
    "DAGSHUB_REPO",
    "DAGSHUB_CLIENT_HOST",
    "DAGSHUB_BRANCH",
    "DAGSHUB_USERNAME",
    "BRANCH",
    "HF_DAGSHUB_LOG_ARTIFACTS",
    "HF_DAGSHUB_MODEL_NAME",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_TAGS",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def reader(repository) -> MlflowClient:
    """A client for reading back: the credentials ride in the URL (requests sends them as
    basic auth), so the test never needs MLflow's process-wide credential variables."""
    scheme, rest = repository.uri.split("://", 1)
    return MlflowClient(f"{scheme}://{repository.owner}:{repository.token}@{rest}")


def read_run(client: MlflowClient, run_id: str) -> RunData:
    run = client.get_run(run_id)
    metrics = {}
    for key in run.data.metrics:
        history = sorted(
            client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)
        )
        metrics[key] = [(m.step, m.value) for m in history]
    return RunData(
        params=dict(run.data.params),
        metrics=metrics,
        status=STATUS[run.info.status],
        runs=len(client.search_runs([run.info.experiment_id])),
    )


class TestConformance(TrackerConformance):
    """One experiment per test in the stand-in repository, so counting runs is exact."""

    tracker_class = DagsHubTracker
    params_as_strings = True

    @pytest.fixture(autouse=True)
    def _repository(self, trackmux_env, dagshub_repo, monkeypatch):
        self.repository = dagshub_repo
        monkeypatch.setenv("DAGSHUB_USER_TOKEN", dagshub_repo.token)

    def make_tracker(self, tmp_path):
        return DagsHubTracker(
            host=self.repository.host,
            repo=self.repository.repo,
            experiment_name=f"conformance-{tmp_path.name}",
        )

    def read_back(self, tracker, tmp_path):
        assert tracker.tracking_uri == self.repository.uri
        return read_run(reader(self.repository), tracker.run_id)


# -- a whole run configured the Hugging Face way -----------------------------------------------


def test_env_configured_run_with_model_upload(trackmux_env, dagshub_repo, monkeypatch):
    experiment = unique("from-env")
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", dagshub_repo.token)
    monkeypatch.setenv("DAGSHUB_REPO", dagshub_repo.repo)
    monkeypatch.setenv("DAGSHUB_CLIENT_HOST", dagshub_repo.host)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    monkeypatch.setenv("BRANCH", "experiments")
    monkeypatch.setenv("HF_DAGSHUB_LOG_ARTIFACTS", "true")
    monkeypatch.setenv("HF_DAGSHUB_MODEL_NAME", "tiny-regressor")
    # someone else's MLflow credentials: used by DagsHub's run only while it is open
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "someone-else")
    out = trackmux_env / "out"
    trainer = run_training(out, report_to=["jsonl", "dagshub"])

    identity = trainer.state.tracker_runs["dagshub"]
    assert identity["tracking_uri"] == dagshub_repo.uri
    client = reader(dagshub_repo)
    run = client.get_run(identity["run_id"])
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "conformance"
    assert run.data.tags[BRANCH_TAG] == "experiments"
    assert run.data.params["learning_rate"] == "0.01"
    assert run.data.params["dataset"] == "toy-regression"
    # every metric the run log holds, at the same steps, with the same values
    log = jsonl_log(out)
    data = read_run(client, identity["run_id"])
    for name in ("train/loss", "eval/loss"):
        assert [s for s, _ in data.metrics[name]] == [s for s, _ in log.history(name)]
        assert [v for _, v in data.metrics[name]] == pytest.approx(
            [v for _, v in log.history(name)]
        )
    assert [step for step, _ in data.metrics["train/loss"]] == [2, 4, 6, 8]
    # HF_DAGSHUB_LOG_ARTIFACTS=true: the final model, under HF_DAGSHUB_MODEL_NAME
    assert [entry.path for entry in client.list_artifacts(run.info.run_id)] == ["tiny-regressor"]
    inside = {entry.path for entry in client.list_artifacts(run.info.run_id, "tiny-regressor")}
    assert "tiny-regressor/model.safetensors" in inside
    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "someone-else"
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ
    where = dict(trainer.trackers.where())["dagshub"]
    assert where.startswith(dagshub_repo.uri + "/#/experiments/") and run.info.run_id in where


def test_hugging_face_tracking_uri_names_the_repository(dagshub_repo, monkeypatch):
    # HF's DagsHubCallback is configured by MLFLOW_TRACKING_URI alone
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", dagshub_repo.token)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dagshub_repo.uri)
    tracker = DagsHubTracker()
    assert (tracker.host, tracker.owner, tracker.repo_name) == (
        dagshub_repo.host,
        dagshub_repo.owner,
        dagshub_repo.name,
    )
    assert tracker.settings["tracking_uri"] == dagshub_repo.uri
    assert DagsHubTracker.unconfigured_reason() is None


def test_the_token_is_what_the_server_checks(trackmux_env, dagshub_repo, monkeypatch):
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", "not-the-token")
    tracker = DagsHubTracker(host=dagshub_repo.host, repo=dagshub_repo.repo)
    with pytest.raises(TrackerError, match="error code 401"):
        run_training(trackmux_env / "out", tracker)
    assert "MLFLOW_TRACKING_PASSWORD" not in os.environ


# -- refusals -------------------------------------------------------------------------------


def test_no_token_refuses_before_the_first_step(trackmux_env, monkeypatch):
    monkeypatch.setenv("DAGSHUB_REPO", "someone/project")
    # not strict: a tracker failing inside a run would only be disabled, this must still stop
    monkeypatch.setenv("TRACKMUX_STRICT", "0")
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing import RegressionDataset, TinyRegressor

    args = TrainingArguments(output_dir=str(trackmux_env / "out"), max_steps=4, report_to="dagshub")
    trainer = Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(16))
    with pytest.raises(DagsHubConfigError, match="DAGSHUB_USER_TOKEN is not set") as caught:
        trainer.train()
    assert "https://dagshub.com/user/settings/tokens" in str(caught.value)
    assert trainer.state.global_step == 0
    assert not list((trackmux_env / "out").glob("checkpoint-*"))


def test_all_skips_it_without_a_token_or_a_repository(monkeypatch):
    from trackmux.plugins import PluginRegistry
    from trackmux.report_to import resolve

    registry = PluginRegistry()
    registry.add_tracker(DagsHubTracker)
    assert dict(resolve("all", registry).skipped)["dagshub"] == (
        "not configured: DAGSHUB_USER_TOKEN is not set"
    )
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", "t")
    assert "DAGSHUB_REPO" in dict(resolve("all", registry).skipped)["dagshub"]
    monkeypatch.setenv("DAGSHUB_REPO", "someone/project")
    assert [info.name for info in resolve("all", registry).chosen] == ["dagshub"]
    assert DagsHubTracker.mode() == "online"


def test_missing_or_malformed_repository_is_refused(monkeypatch):
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", "t")
    with pytest.raises(DagsHubConfigError, match="no repository: set DAGSHUB_REPO"):
        DagsHubTracker()
    for bad in ("justaname", "a/b/c", "owner/", " / "):
        with pytest.raises(DagsHubConfigError, match="is not <owner>/<name>"):
            DagsHubTracker(repo=bad)
    with pytest.raises(DagsHubConfigError, match="set 'repo'"):
        DagsHubTracker(repo="a/b", tracking_uri="http://127.0.0.1:1")


# -- settings and URL building -------------------------------------------------------------


def test_settings_beat_env_and_the_built_uri_beats_mlflow_tracking_uri(monkeypatch):
    monkeypatch.setenv("DAGSHUB_USER_TOKEN", "t")
    monkeypatch.setenv("DAGSHUB_REPO", "env-owner/env-repo")
    monkeypatch.setenv("DAGSHUB_BRANCH", "env-branch")
    monkeypatch.setenv("BRANCH", "hf-branch")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    from_env = DagsHubTracker()
    assert from_env.settings["tracking_uri"] == "https://dagshub.com/env-owner/env-repo.mlflow"
    assert (from_env.branch, from_env.username, from_env.model_name) == (
        "env-branch",
        "env-owner",
        "model",
    )
    given = DagsHubTracker(
        repo="me/mine", host="https://dagshub.example.org/", branch="b", username="u"
    )
    assert given.settings["tracking_uri"] == "https://dagshub.example.org/me/mine.mlflow"
    assert (given.branch, given.username) == ("b", "u")
    monkeypatch.delenv("DAGSHUB_BRANCH")
    assert DagsHubTracker().branch == "hf-branch"
    monkeypatch.delenv("BRANCH")
    assert DagsHubTracker().branch == "main"


@pytest.mark.parametrize(
    "owner, name, expected",
    [
        ("alice", "my-repo", "https://dagshub.com/alice/my-repo.mlflow"),
        ("org.team_1", "repo.v2", "https://dagshub.com/org.team_1/repo.v2.mlflow"),
        ("my org", "r#1?x", "https://dagshub.com/my%20org/r%231%3Fx.mlflow"),
        ("dom\\user", "a\\b", "https://dagshub.com/dom%5Cuser/a%5Cb.mlflow"),
        ("zoë", "ünï", "https://dagshub.com/zo%C3%AB/%C3%BCn%C3%AF.mlflow"),
    ],
)
def test_tracking_uri_is_a_url_even_on_windows(monkeypatch, owner, name, expected):
    # what Windows would change for code built on os.path / os.sep (HF's bug, #42687)
    monkeypatch.setattr(os, "sep", "\\")
    monkeypatch.setattr(os, "path", ntpath)
    uri = tracking_uri("https://dagshub.com/", owner, name)
    assert uri == expected and "\\" not in uri
    assert repo_from_tracking_uri(uri) == ("https://dagshub.com", owner, name)


def test_repository_parsing():
    assert split_repo(" alice / proj ") == ("alice", "proj")
    assert split_repo("/alice/proj/") == ("alice", "proj")
    assert repo_from_tracking_uri("https://dagshub.com/a/b.mlflow/") == (
        "https://dagshub.com",
        "a",
        "b",
    )
    for other in (None, "", "http://127.0.0.1:5000", "sqlite:///x/a.mlflow", "https://h/a.mlflow"):
        assert repo_from_tracking_uri(other) is None
    assert repo_from_tracking_uri("https://h/a/.mlflow") is None


# -- packaging ---------------------------------------------------------------------------


def test_importing_the_plugin_does_not_import_mlflow():
    code = (
        "import sys, trackmux_dagshub, trackmux_dagshub.tracker\n"
        "from trackmux.plugins import get_registry\n"
        "info = get_registry().get('dagshub')\n"
        "assert info is not None and info.available, info\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlflow', 'dagshub')))\n"
    )
    result = run_child([sys.executable, "-c", code], timeout=60)
    assert result.stdout.strip() == "[]", describe_child(result)
