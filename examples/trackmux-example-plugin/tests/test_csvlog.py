"""csvlog passes trackmux's conformance suite, and writes the files its README promises.

There is no conftest.py: the fixtures ``trackmux_env`` (a quiet, isolated working
directory) and ``trackmux_train`` (a tiny training run) come with trackmux itself, through
its ``pytest11`` entry point.
"""

import json

import pytest
from trackmux.testing import RunData, TrackerConformance

from trackmux_csvlog import CsvLogTracker, read_metrics


@pytest.fixture(autouse=True)
def _without_csvlog_settings(monkeypatch):
    # trackmux_env clears the variables trackmux knows of; these are ours to clear
    for name in ("TRACKMUX_CSVLOG_DIR", "TRACKMUX_CSVLOG_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)


def read_run(run_dir, runs=1) -> RunData:
    return RunData(
        params=json.loads((run_dir / "params.json").read_text(encoding="utf-8")),
        metrics=read_metrics(run_dir),
        status=(run_dir / "status.txt").read_text(encoding="utf-8").strip(),
        runs=runs,
    )


class TestCsvLogConformance(TrackerConformance):
    tracker_class = CsvLogTracker
    purges_after_resume = True

    def make_tracker(self, tmp_path):
        return CsvLogTracker(dir=str(tmp_path / "csv"))

    def read_back(self, tracker, tmp_path):
        runs = sorted((tmp_path / "csv").iterdir())
        return read_run(runs[-1], runs=len(runs))


def test_report_to_by_name_writes_under_output_dir(trackmux_train, trackmux_env):
    trainer = trackmux_train(report_to=["csvlog"])
    run_dir = trackmux_env / "out" / "csvlog" / "conformance"
    lines = (run_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "step,name,value"
    data = read_run(run_dir)
    logged = [
        (entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry
    ]
    assert data.metrics["train/loss"] == logged
    assert [step for step, _ in data.metrics["eval/loss"]] == [4, 8]
    assert data.params["learning_rate"] == 0.01
    assert data.status == "success"
    assert dict(trainer.trackers.where())["csvlog"] == str(run_dir / "metrics.csv")


def test_evaluate_after_train_appends_to_the_same_run(trackmux_train, trackmux_env):
    trainer = trackmux_train(report_to=["csvlog"])
    trainer.evaluate()
    run_dir = trackmux_env / "out" / "csvlog" / "conformance"
    rows = (run_dir / "metrics.csv").read_text(encoding="utf-8").splitlines()
    assert rows.count("step,name,value") == 1
    assert [step for step, _ in read_metrics(run_dir)["eval/loss"]] == [4, 8, 8]
    assert (run_dir / "status.txt").read_text(encoding="utf-8") == "success\n"


def test_checkpoints_are_copied_when_the_policy_asks(trackmux_train, trackmux_env, monkeypatch):
    monkeypatch.setenv("TRACKMUX_CSVLOG_ARTIFACTS", "checkpoint")
    trackmux_train(report_to=["csvlog"])
    artifacts = trackmux_env / "out" / "csvlog" / "conformance" / "artifacts"
    assert sorted(path.name for path in artifacts.iterdir()) == ["checkpoint-4", "checkpoint-8"]
    assert (artifacts / "checkpoint-8" / "model.safetensors").stat().st_size > 0


def test_no_artifacts_by_default(trackmux_train, trackmux_env):
    trackmux_train(report_to=["csvlog"])
    assert not (trackmux_env / "out" / "csvlog" / "conformance" / "artifacts").exists()
