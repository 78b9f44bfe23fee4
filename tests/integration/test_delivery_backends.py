"""Issue 14 against real backends (nox -s integration): the delivery process feeds MLflow (a
real local server), TensorBoard and W&B (offline) from the run journal. A ``kill -9`` of the
training process loses no point and closes every backend run as killed; ``trackmux sync``
of a run that was delivered live continues the same MLflow run and sends only what is
missing. Each test waits for the delivery process through the run's state file (a deadline
only against a process that would never finish), never on timing."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
from test_reliability_backends import (
    EXPERIMENT,
    backend_env,
    mlflow_runs,
    mlflow_steps,
    tensorboard,
    wait_delivered,
    wait_for_step,
    wandb_runs,
)

from trackmux.cli import main as cli
from trackmux.runlog import read_run
from trackmux.sync import read_state
from trackmux.testing.processes import rest_of_output

TRACKERS = ("mlflow", "tensorboard", "wandb")


@pytest.fixture(autouse=True)
def _process_delivery(monkeypatch):
    """These tests are about the delivery process (the default), whatever the environment
    of the test run says."""
    monkeypatch.setenv("TRACKMUX_DELIVERY", "process")


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    from trackmux_mlflow.testing import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-delivery")) as url:
        yield url


#: trains until killed; prints ``step N`` and, once, ``delivery PID`` (the delivery process)
ENDLESS = """
import sys
from trackmux import Trainer, TrainerCallback, TrainingArguments
from trackmux.testing.toy import RegressionDataset, TinyRegressor


class Progress(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 1:
            print("delivery", trainer._tracker_hub.delivery.pid, flush=True)
        print("step", state.global_step, flush=True)


args = TrainingArguments(
    output_dir=sys.argv[1],
    max_steps=10_000_000,
    logging_steps=1,
    save_strategy="no",
    report_to=sys.argv[2].split(","),
    run_name="killed",
    disable_tqdm=True,
    tracker_strict=True,
)
trainer = Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(64), callbacks=[Progress()])
trainer.train()
"""


def start(tmp_path, mlflow_url, trackers):
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-c", ENDLESS, str(tmp_path / "out"), ",".join(["jsonl", *trackers])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=backend_env(tmp_path, mlflow_url),
        cwd=tmp_path,
    )


def test_kill_9_of_the_training_delivers_every_point_and_closes_each_backend_killed(
    tmp_path, mlflow_url, monkeypatch
):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    before = {run.info.run_id for run in mlflow_runs(mlflow_url)}
    process = start(tmp_path, mlflow_url, TRACKERS)
    try:
        wait_for_step(process, 30, timeout=300)
        process.send_signal(signal.SIGKILL)
        rest_of_output(process, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    run_dir = tmp_path / "out" / "runs" / "killed"
    log = read_run(run_dir)
    assert not log.finished  # no finish record: the training process died
    wait_delivered(run_dir, TRACKERS)
    entries = read_state(run_dir)["trackers"]
    assert {entries[n]["status"] for n in TRACKERS} == {"killed"}
    steps = [s for s, _ in log.history("train/loss")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 30

    (run,) = [r for r in mlflow_runs(mlflow_url) if r.info.run_id not in before]
    assert run.info.status == "KILLED"
    assert mlflow_steps(mlflow_url, run.info.run_id) == steps  # each point once
    board = tensorboard(run_dir / "tensorboard")
    assert [s for s, _ in board["scalars"]["train/loss"]] == steps
    assert board["statuses"] == ["killed"]
    (wandb_run,) = wandb_runs(tmp_path / "wandb").values()
    assert [s for s, _ in wandb_run.metrics()["train/loss"]] == steps
    assert wandb_run.exit_codes and wandb_run.exit_codes[-1] != 0


def test_sync_after_both_processes_died_continues_the_same_mlflow_run(
    tmp_path, mlflow_url, monkeypatch, capsys
):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    before = {run.info.run_id for run in mlflow_runs(mlflow_url)}
    process = start(tmp_path, mlflow_url, ["mlflow"])
    delivery = None
    try:
        for line in process.stdout:
            if line.startswith("delivery "):
                delivery = int(line.split()[1])
                break
        wait_for_step(process, 40, timeout=300)
        run_dir = tmp_path / "out" / "runs" / "killed"
        while not read_state(run_dir)["trackers"].get("mlflow", {}).get("records"):
            time.sleep(0.05)  # the delivery process sent something: its run exists
        process.send_signal(signal.SIGKILL)
        os.kill(delivery, signal.SIGKILL)  # the delivery process dies too, whatever it sent
        rest_of_output(process, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    identity = read_state(run_dir)["trackers"]["mlflow"]["identity"]
    capsys.readouterr()
    assert cli(["sync", str(run_dir), "--to", "mlflow"]) == 0
    out = capsys.readouterr().out
    (run,) = [r for r in mlflow_runs(mlflow_url) if r.info.run_id not in before]
    assert run.info.run_id == identity["run_id"], out  # no second MLflow run
    steps = [s for s, _ in read_run(run_dir).history("train/loss")]
    assert mlflow_steps(mlflow_url, run.info.run_id) == steps, out
    assert run.info.status == "KILLED"
    # and a second sync has nothing left to send
    assert cli(["sync", str(run_dir), "--to", "mlflow"]) == 0
    assert "mlflow: up to date" in capsys.readouterr().out


def test_a_finished_live_run_is_up_to_date_for_sync(trackmux_env, mlflow_url, monkeypatch, capsys):
    from trackmux.testing import run_training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    before = {run.info.run_id for run in mlflow_runs(mlflow_url)}
    out = trackmux_env / "out"
    run_training(out, report_to=["jsonl", "mlflow"], run_name="live", tracker_close_timeout=600)
    run_dir = out / "runs" / "live"
    wait_delivered(run_dir, ["mlflow"])
    (run,) = [r for r in mlflow_runs(mlflow_url) if r.info.run_id not in before]
    assert run.info.status == "FINISHED"
    capsys.readouterr()
    assert cli(["sync", str(run_dir), "--to", "mlflow"]) == 0
    assert "mlflow: up to date" in capsys.readouterr().out
    assert [r.info.run_id for r in mlflow_runs(mlflow_url) if r.info.run_id not in before] == [
        run.info.run_id
    ]
    steps = [s for s, _ in read_run(run_dir).history("train/loss")]
    assert mlflow_steps(mlflow_url, run.info.run_id) == steps
    assert (
        json.loads((run_dir / "sync-state.json").read_text())["trackers"]["mlflow"]["status"]
        == "success"
    )
