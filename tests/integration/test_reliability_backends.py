"""Issue 8 against real backends (nox -s integration, every plugin installed): SIGINT and
SIGTERM in a subprocess reporting to jsonl, MLflow (a real local server), TensorBoard and
W&B (offline); resuming an interrupted run in MLflow, TensorBoard and jsonl; torchrun with
two ranks and three trackers. Each test records sent versus received per tracker
(``--junitxml``: the ``records`` property)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trackmux.runlog import read_run
from trackmux.sync import read_state
from trackmux.testing.processes import describe_child, rest_of_output, run_child

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = "reliability"


@pytest.fixture(autouse=True)
def _process_delivery(monkeypatch):
    """These tests are about the delivery process (the default), whatever the environment
    of the test run says."""
    monkeypatch.setenv("TRACKMUX_DELIVERY", "process")


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    from trackmux_mlflow.testing import mlflow_server

    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def report(record_property, sent: int, **received: int) -> None:
    record_property("records", json.dumps({"sent": sent, "received": received}))


def mlflow_runs(url: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id]) if experiment else []


def mlflow_steps(url: str, run_id: str, name: str = "train/loss") -> list[int]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(url).get_metric_history(run_id, name)
    return [m.step for m in sorted(history, key=lambda m: (m.timestamp, m.step))]


def tensorboard(logdir) -> dict:
    """{tag: [(step, value)]} of the scalars, and the statuses written, from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = {t: [(e.step, e.value) for e in events.Scalars(t)] for t in events.Tags()["scalars"]}
    statuses = [
        e.tensor_proto.string_val[0].decode() for e in events.Tensors("status/text_summary")
    ]
    return {"scalars": scalars, "statuses": statuses}


def wandb_runs(root) -> dict:
    """The offline W&B runs under ``root``, read from their .wandb files with the reader the
    wandb plugin's tests use."""
    import importlib.util

    path = ROOT / "plugins" / "trackmux-wandb" / "tests" / "test_wandb.py"
    spec = importlib.util.spec_from_file_location("_reliability_wandb_reader", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.read_runs(root)


# ------------------------------------------------------------------------- interrupts

ENDLESS = """
import sys
from trackmux import Trainer, TrainerCallback, TrainingArguments
from trackmux.testing.toy import RegressionDataset, TinyRegressor


class Progress(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        print("step", state.global_step, flush=True)

    def on_exception(self, args, state, control, exception, **kwargs):
        print("sent", len(state.log_history), flush=True)


args = TrainingArguments(
    output_dir=sys.argv[1],
    max_steps=10_000_000,
    logging_steps=1,
    save_strategy="no",
    save_on_interrupt=True,
    report_to=["jsonl", "mlflow", "tensorboard", "wandb"],
    run_name="interrupted",
    disable_tqdm=True,
    tracker_strict=True,
    # a generous deadline for a loaded machine: the interrupt checkpoint waits for every
    # tracker's start, and the test asserts the mlflow identity is in it
    tracker_close_timeout=120,
)
Trainer(
    TinyRegressor(), args, train_dataset=RegressionDataset(64), callbacks=[Progress()]
).train()
"""


def backend_env(tmp_path, mlflow_url) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(
        MLFLOW_TRACKING_URI=mlflow_url,
        MLFLOW_EXPERIMENT_NAME=EXPERIMENT,
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp_path / "wandb"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb-data"),
        HOME=str(tmp_path / "home"),
    )
    return env


def wait_delivered(run_dir, names, timeout: float = 600.0) -> None:
    """Wait until the delivery process gave every tracker of ``names`` the whole journal and
    closed its run (the run's state file says so); a deadline only against a stuck one."""
    from trackmux.replay import Journal

    deadline = time.monotonic() + timeout
    while True:
        total = Journal(run_dir).count_all()
        entries = read_state(run_dir)["trackers"]
        if all(
            entries.get(n, {}).get("records", -1) >= total and "finished" in entries[n]
            for n in names
        ):
            return
        assert time.monotonic() < deadline, f"not delivered within {timeout} s: {entries}"
        time.sleep(0.1)


def wait_for_step(process, step: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    printed = []
    for line in process.stdout:
        printed.append(line)
        if line.startswith("step ") and int(line.split()[1]) >= step:
            return
        if time.monotonic() > deadline:
            break
    if process.poll() is None:  # else it ended by itself: its exit status says how
        process.kill()
    stdout, stderr = rest_of_output(process, timeout=60)
    pytest.fail(
        f"no step {step} within {timeout} s\n"
        + describe_child(process, "".join(printed) + stdout, stderr)
    )


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_closes_every_backend_as_killed(
    tmp_path, mlflow_url, record_property, monkeypatch, signum
):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    before = {run.info.run_id for run in mlflow_runs(mlflow_url)}
    process = subprocess.Popen(
        [sys.executable, "-c", ENDLESS, str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=backend_env(tmp_path, mlflow_url),
        cwd=tmp_path,
    )
    try:
        wait_for_step(process, 10, timeout=300)
        process.send_signal(signum)
        # the save and the close may each wait up to tracker_close_timeout (120 s) on trackers
        stdout, stderr = rest_of_output(process, timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    record_property("returncode", process.returncode)
    child = describe_child(process, stdout, stderr)
    if signum == signal.SIGTERM:  # trackmux hands SIGTERM back once the trackers are closed
        assert process.returncode == -signal.SIGTERM, child  # 143 in a shell
    else:
        # the KeyboardInterrupt propagated out of train() unchanged and uncaught: CPython ends
        # by SIGINT (-2, 130 in a shell), but exits 1 instead once torch._dynamo was imported
        # in this environment (it is, by the optimizer): CPython's choice, not trackmux's
        assert process.returncode in (-signal.SIGINT, 1), child
        assert stderr.rstrip().endswith("KeyboardInterrupt"), child
    said_sent = [line for line in stdout.splitlines() if line.startswith("sent ")]
    assert said_sent, child
    sent = int(said_sent[0].split()[1])
    steps = list(range(1, sent + 1))

    log = read_run(tmp_path / "out" / "runs" / "interrupted")
    # train() returned without waiting for the trackers the delivery process feeds (issue
    # 14): it closes their runs as killed from the journal, in the background
    wait_delivered(tmp_path / "out" / "runs" / "interrupted", ("mlflow", "tensorboard", "wandb"))
    (run,) = [r for r in mlflow_runs(mlflow_url) if r.info.run_id not in before]
    board = tensorboard(tmp_path / "out" / "runs" / "interrupted" / "tensorboard")
    (wandb_run,) = wandb_runs(tmp_path / "wandb").values()
    received = {
        "jsonl": [s for s, _ in log.history("train/loss")],
        "mlflow": mlflow_steps(mlflow_url, run.info.run_id),
        "tensorboard": [s for s, _ in board["scalars"]["train/loss"]],
        "wandb": [s for s, _ in wandb_run.metrics()["train/loss"]],
    }
    report(record_property, sent, **{name: len(got) for name, got in received.items()})
    for name, got in received.items():
        assert got == steps, f"{name}\n{child}"

    assert log.status == "killed" and log.records[-1]["type"] == "finish", child
    assert run.info.status == "KILLED", child
    assert board["statuses"] == ["killed"], child
    assert wandb_run.exit_codes == [130], child  # non-zero: W&B shows it as failed/killed
    checkpoint = tmp_path / "out" / f"checkpoint-{sent}"
    # transformers' schema in trainer_state.json, trackmux's own keys beside it (issue 16)
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == sent
    state = json.loads((checkpoint / "trackmux_state.json").read_text())
    # the interrupt checkpoint waits on no tracker (issue 14): it holds the identities known
    # when it was written. The delivery process's trackers are never pending there: their
    # runs' identities are in the run's state file, which a resume (it appends to the same
    # journal) and `trackmux sync` continue from
    assert "jsonl" in state["tracker_runs"]
    assert state["tracker_runs_pending"] == []
    delivered = read_state(tmp_path / "out" / "runs" / "interrupted")["trackers"]
    assert delivered["mlflow"]["identity"]["run_id"] == run.info.run_id


# --------------------------------------------------------------------- resume continuity


def test_resume_continues_the_same_runs_without_repeating_a_step(
    trackmux_env, mlflow_url, record_property, monkeypatch
):
    from trackmux.testing import StopAt, run_training

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    before = {run.info.run_id for run in mlflow_runs(mlflow_url)}
    out = trackmux_env / "out"
    options = dict(
        report_to=["jsonl", "mlflow", "tensorboard"],
        run_name="resumed",
        logging_steps=1,
        save_on_interrupt=True,
    )
    with pytest.raises(KeyboardInterrupt):
        run_training(out, callbacks=[StopAt(6, KeyboardInterrupt())], **options)
    assert (out / "checkpoint-5").is_dir()  # the interrupt checkpoint: the last whole step
    trainer = run_training(out, resume=True, **options)
    assert trainer.state.global_step == 8
    wait_delivered(out / "runs" / "resumed", ("mlflow", "tensorboard"))

    (run,) = [r for r in mlflow_runs(mlflow_url) if r.info.run_id not in before]
    log = read_run(out / "runs" / "resumed")
    board = tensorboard(out / "runs" / "resumed" / "tensorboard")
    raw = [
        r["step"] for r in log.records if r["type"] == "metrics" and "train/loss" in r["metrics"]
    ]
    received = {
        "jsonl": raw,
        "mlflow": mlflow_steps(mlflow_url, run.info.run_id),
        "tensorboard": [s for s, _ in board["scalars"]["train/loss"]],
    }
    report(record_property, 8, **{name: len(got) for name, got in received.items()})
    for name, got in received.items():
        assert got == list(range(1, 9)), name  # one run, each step once, increasing
    assert run.info.status == "FINISHED"
    assert board["statuses"] == ["killed", "success"]
    assert log.statuses == ["killed", "success"]
    # params: one value each (MLflow refuses a changed value; strict mode would raise)
    params = run.data.params
    assert params["learning_rate"] == "0.01" and params["run_name"] == "resumed"
    starts = [r for r in log.records if r["type"] == "start"]
    assert starts[0]["config"] == starts[1]["config"]


# --------------------------------------------------------------------------- torchrun

DDP_SCRIPT = ROOT / "tests" / "dist_scripts" / "train_ddp.py"
DDP_STEPS = 6
_TORCHRUN_VARIABLES = {"RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"}


def test_torchrun_two_ranks_three_trackers(tmp_path, mlflow_url, record_property):
    """tests/test_distributed.py runs the same script with jsonl alone; here with jsonl,
    TensorBoard and MLflow: one run each, the cross-rank means, no rank left waiting."""
    env = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARIABLES}
    env.update(
        OMP_NUM_THREADS="1",
        MLFLOW_TRACKING_URI=mlflow_url,
        MLFLOW_EXPERIMENT_NAME="reliability-ddp",
        MLFLOW_DISABLE_TELEMETRY="true",
        TRACKMUX_STRICT="1",
    )
    options = {"report_to": ["jsonl", "tensorboard", "mlflow"]}
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone"),
        *(str(DDP_SCRIPT), str(tmp_path), json.dumps(options)),
    ]
    began = time.monotonic()
    # a generous deadline against a rank that blocks at exit (it would never end), not a
    # budget: a loaded machine may take minutes
    result = run_child(command, timeout=600, env=env, check=False)
    elapsed = time.monotonic() - began
    assert result.returncode == 0, describe_child(result)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # rank 0 alone started a delivery process (issue 14); it may still be closing the runs
    wait_delivered(tmp_path / "rank0" / "runs" / "ddp", ("tensorboard", "mlflow"))

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_url)
    experiment = client.get_experiment_by_name("reliability-ddp")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # one run, from rank 0
    history = client.get_metric_history(runs[0].info.run_id, "train/loss")
    mlflow_points = sorted((m.step, m.value) for m in history)
    logged = read_run(tmp_path / "rank0" / "runs" / "ddp").history("train/loss")
    board = tensorboard(tmp_path / "rank0" / "runs" / "ddp" / "tensorboard")
    assert not (tmp_path / "rank1" / "runs").exists()  # nothing from the other rank
    report(
        record_property,
        DDP_STEPS,
        jsonl=len(logged),
        mlflow=len(mlflow_points),
        tensorboard=len(board["scalars"]["train/loss"]),
    )

    local = [{int(s): loss for s, loss in r["local_losses"].items()} for r in ranks]
    means = {step: (local[0][step] + local[1][step]) / 2 for step in range(1, DDP_STEPS + 1)}
    for name, points in (
        ("jsonl", logged),
        ("mlflow", mlflow_points),
        ("tensorboard", board["scalars"]["train/loss"]),
    ):
        assert [s for s, _ in points] == list(range(1, DDP_STEPS + 1)), name
        for step, value in points:
            assert value == pytest.approx(means[step], rel=1e-5), (name, step)
    # no rank blocked at exit: both wrote their report and torchrun returned
    assert [r["global_step"] for r in ranks] == [DDP_STEPS, DDP_STEPS], describe_child(result)
    record_property("torchrun_seconds", round(elapsed, 1))
