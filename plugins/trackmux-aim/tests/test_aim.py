"""The Aim plugin against a real local Aim repository, read back with Aim's own reader
(``aim.Repo``, ``Run.metrics()``), steps and values compared exactly."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from trackmux.testing import (
    RunData,
    TrackerConformance,
    assert_found,
    assert_unavailable,
    discovery_report,
    jsonl_log,
    replace_tracker_identity,
    run_child,
    run_training,
)
from trackmux_aim.tracker import EXPERIMENT_ENV, REPO_ENV, AimTracker

SYSTEM_PREFIX = "__system__"  # Aim's own CPU/GPU/memory metrics


def open_repo(path, *, index=False):
    """``aim.Repo`` at ``path``; with ``index``, every run not yet in the repository's index
    is added first, as ``aim up`` does when it starts (a killed run was never indexed)."""
    from aim import Repo
    from aim.sdk.index_manager import RepoIndexManager

    repo = Repo(str(path))
    if index:
        manager = RepoIndexManager(repo)
        for run_hash in repo.list_all_runs():
            manager.index(run_hash)
    return repo


def metrics(aim_run) -> dict[str, list[tuple[int, float]]]:
    """Every metric trackmux logged (Aim's system metrics left out): ``[(step, value)]``."""
    series = {}
    for metric in aim_run.metrics():
        if metric.name.startswith(SYSTEM_PREFIX):
            continue
        assert metric.context.to_dict() == {}, metric.context.to_dict()
        steps, (values, *_) = metric.data.items_list()
        series[metric.name] = list(zip(steps, values))
    return series


def read_run(repo_path, run_hash, *, index=False):
    aim_run = open_repo(repo_path, index=index).get_run(run_hash)
    assert aim_run is not None, f"run {run_hash} not in the index of {repo_path}"
    return aim_run


def locks(repo_path) -> list[str]:
    return sorted(os.listdir(os.path.join(repo_path, ".aim", "locks")))


class TestAimConformance(TrackerConformance):
    tracker_class = AimTracker

    @pytest.fixture(autouse=True)
    def _repo_ready(self, seeded_output_dir):
        """Every run of the suite goes to ``<tmp>/out``: its repository exists already."""

    def make_tracker(self, tmp_path):
        return AimTracker()

    def read_back(self, tracker, tmp_path):
        repo = open_repo(tracker.repo)
        aim_run = repo.get_run(tracker.run_hash)
        assert aim_run is not None, "the closed run is in the repository's index"
        return RunData(
            params=aim_run.get("hparams", {}),
            metrics=metrics(aim_run),
            status=aim_run.get("status"),
            runs=len(repo.list_all_runs()),
        )


def test_found_through_its_entry_point_and_selected_by_report_to(
    trackmux_env, seed_aim_repo, network_attempts
):
    assert_found("aim", distribution="trackmux-aim", tracker_class=AimTracker, mode="local")
    out = seed_aim_repo(trackmux_env / "out")
    trainer = run_training(out, report_to=["jsonl", "aim"])
    (run_hash,) = open_repo(out).list_all_runs()
    assert dict(trainer.trackers.where())["aim"] == f"run {run_hash}: aim up --repo {out}"
    # the identity a checkpoint keeps: the run hash and the repository, relative to output_dir
    assert trainer.state.tracker_runs["aim"] == {"run_hash": run_hash, "repo": "."}
    # closing released the run's lock, and indexing the index's: none is left behind
    assert locks(out) == []
    aim_run = read_run(out, run_hash)
    assert (aim_run.name, aim_run.experiment, aim_run.active) == ("conformance", "default", False)
    assert aim_run.end_time is not None
    log = jsonl_log(out)
    assert metrics(aim_run)["train/loss"] == log.history("train/loss")  # exact floats
    assert aim_run.get("hparams") == log.config
    # Aim's system metrics are on by default, as in Aim's own integrations
    assert any(m.name.startswith(SYSTEM_PREFIX) for m in aim_run.metrics())
    # Aim 3.29 has no telemetry to turn off: a run, its system metrics included, stays local
    assert network_attempts == []


def test_epoch_is_stored_beside_each_point(seeded_output_dir):
    out = seeded_output_dir
    run_training(out, AimTracker(system_tracking_interval=0), eval_strategy="no")
    (run_hash,) = open_repo(out).list_all_runs()
    aim_run = read_run(out, run_hash)
    (loss,) = [m for m in aim_run.metrics() if m.name == "train/loss"]
    steps, (_, epochs, _) = loss.data.items_list()
    logged = [
        (record["step"], record["epoch"])
        for record in jsonl_log(out).records
        if record["type"] == "metrics" and "train/loss" in record["metrics"]
    ]
    assert list(zip(steps, epochs)) == logged == [(2, 0.5), (4, 1.0), (6, 1.5), (8, 2.0)]
    assert not any(m.name.startswith(SYSTEM_PREFIX) for m in aim_run.metrics())


@pytest.mark.parametrize("source", ["code", "environment"])
def test_repo_and_experiment_settings(trackmux_env, monkeypatch, seed_aim_repo, source):
    import trackmux

    monkeypatch.setenv("HOME", str(trackmux_env))
    if source == "code":  # a repository that does not exist yet is created
        tracker = AimTracker(repo=str(trackmux_env / "repo"), experiment="exp1")
    else:
        seed_aim_repo(trackmux_env / "repo")
        monkeypatch.setenv(REPO_ENV, "~/repo")  # ~ is expanded
        monkeypatch.setenv(EXPERIMENT_ENV, "exp1")
        tracker = AimTracker()
    with trackmux.start_run(["jsonl"], trackers=[tracker], output_dir=trackmux_env / "out") as run:
        run.log({"loss": 0.5}, step=3)
    assert tracker.repo == str(trackmux_env / "repo")
    assert not (trackmux_env / "out" / ".aim").exists()
    aim_run = read_run(tracker.repo, tracker.run_hash)
    assert aim_run.experiment == "exp1"
    assert metrics(aim_run) == {"loss": [(3, 0.5)]}


@pytest.mark.parametrize("value", ["", -1, "ten"])
def test_bad_settings_name_the_field_and_the_fix(trackmux_env, value):
    from trackmux.tracker import RunInfo

    field = "repo" if value == "" else "system_tracking_interval"
    tracker = AimTracker(**{field: value})
    with pytest.raises(ValueError, match=f"aim: {field}=") as raised:
        if field == "repo":
            tracker.configured_store(RunInfo("r", {}, str(trackmux_env)))
        else:
            tracker._system_tracking_interval()
    assert repr(value) in str(raised.value)


KILLED_CHILD = """
import os, signal, sys
from trackmux import TrainerCallback
from trackmux.testing import run_training
from trackmux_aim.tracker import AimTracker

class Kill(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == 7:  # after the checkpoint at 4 and the log at 6
            os.kill(os.getpid(), signal.SIGKILL)

run_training(sys.argv[1], AimTracker(system_tracking_interval=0), callbacks=[Kill()])
"""


def test_a_killed_run_stays_readable_and_resumes_as_the_same_run(seeded_output_dir):
    out = seeded_output_dir
    child = run_child([sys.executable, "-c", KILLED_CHILD, str(out)], check=False)
    assert child.returncode == -9, child.stderr

    # kill -9 left the run's lock and no index entry: Aim's reader still gets its data
    (run_hash,) = open_repo(out).list_all_runs()
    assert locks(out) == [f"{run_hash}.softlock"]
    killed = read_run(out, run_hash, index=True)
    assert killed.active and killed.end_time is None and killed.get("status") is None
    assert killed.get("hparams")["max_steps"] == 8
    logged = jsonl_log(out).history("train/loss")
    arrived = metrics(killed).get("train/loss", [])
    assert arrived == logged[: len(arrived)]  # whatever arrived before the kill, exact

    # the lock of a dead process is stale: Aim takes it over, the same run continues
    resumed = AimTracker(system_tracking_interval=0)
    run_training(out, resumed, resume=True)
    assert resumed.run_hash == run_hash
    assert open_repo(out).list_all_runs() == [run_hash]
    assert locks(out) == []
    aim_run = read_run(out, run_hash)
    assert aim_run.get("status") == "success" and not aim_run.active
    loss = metrics(aim_run)["train/loss"]
    # one value per step: step 6 holds what the resumed training logged
    assert loss == jsonl_log(out).history("train/loss")[-4:]
    assert [step for step, _ in loss] == [2, 4, 6, 8]


def test_evaluate_after_train_writes_into_the_same_run(seeded_output_dir):
    out = seeded_output_dir
    trainer = run_training(out, AimTracker(system_tracking_interval=0))
    trainer.evaluate()
    (run_hash,) = open_repo(out).list_all_runs()
    aim_run = read_run(out, run_hash)
    assert [step for step, _ in metrics(aim_run)["eval/loss"]] == [4, 8]
    assert aim_run.get("status") == "success"
    assert locks(out) == []


@pytest.mark.parametrize(
    "key, where",
    [("repo", "../../elsewhere"), ("repo", "ABSOLUTE"), ("remote", "aim://127.0.0.1:9")],
)
def test_checkpoint_naming_another_store_is_refused(
    trackmux_env, seed_aim_repo, caplog, key, where
):
    """A repository outside output_dir, or an Aim server, that is not the configured one:
    a checkpoint is data, not instructions."""
    out = seed_aim_repo(trackmux_env / "a" / "b" / "out")
    elsewhere = trackmux_env / "a" / "elsewhere"
    where = str(elsewhere) if where == "ABSOLUTE" else where
    first = AimTracker(system_tracking_interval=0)
    run_training(out, first)
    stored = replace_tracker_identity(
        out / "checkpoint-4", "aim", {"run_hash": first.run_hash, key: where}
    )
    assert stored == {"run_hash": first.run_hash, "repo": "."}

    resumed = AimTracker(system_tracking_interval=0)
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        run_training(out, resumed, resume=str(out / "checkpoint-4"))
    assert not elsewhere.exists()
    assert resumed.repo == str(out) and resumed.run_hash != first.run_hash
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "'aim'" in refused[0] and where in refused[0]
    assert sorted(open_repo(out).list_all_runs()) == sorted([first.run_hash, resumed.run_hash])


def test_trackmux_env_clears_every_setting_the_plugin_reads():
    from trackmux.testing.pytest_plugin import BACKEND_ENV_VARS

    assert {REPO_ENV, EXPERIMENT_ENV, "__AIM_REPO_NAME__"} <= set(BACKEND_ENV_VARS)


def test_import_and_discovery_load_neither_aim_nor_torch():
    report = discovery_report("aim", "trackmux_aim", ("torch", "aim"))
    assert (report["available"], report["heavy"]) == (True, [])


@pytest.mark.parametrize(
    "version, reason",
    [
        (None, "backend missing: aim is not installed"),
        ("3.28.0", "unsupported backend: aim 3.28.0 is installed, aim>=3.29,<4 is supported"),
    ],
    ids=["missing", "too-old"],
)
def test_reports_itself_unavailable_without_a_usable_aim(version, reason):
    fix = 'pip install "aim>=3.29,<4"'
    report = assert_unavailable("aim", "aim", "aim", version=version, reason=reason, fix=fix)
    assert report["reason"] == reason  # the whole of it
