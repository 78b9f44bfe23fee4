"""``trackmux sync`` into a real MLflow server and real TensorBoard event files, read back with
each backend's own reader and compared, step for step and value for value, with the run log;
and docs/sync.md, run as written."""

from __future__ import annotations

import re
import shlex
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from trackmux.cli import main
from trackmux.runlog import read_run
from trackmux.sync import read_state
from trackmux.testing import StopAt, describe_child, run_child, run_training

pytest.importorskip("trackmux_mlflow")
pytest.importorskip("trackmux_tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

from trackmux_mlflow.testing import mlflow_server  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs"
RUN = "out/runs/conformance"
SYNC = ["sync", RUN, "--to", "mlflow,tensorboard"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-sync")) as url:
        yield url


@pytest.fixture
def env(trackmux_env, server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", trackmux_env.name)  # one per test
    return trackmux_env


def mlflow_runs(server, experiment_name):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    experiment = client.get_experiment_by_name(experiment_name)
    return client, client.search_runs([experiment.experiment_id]) if experiment else []


def mlflow_history(client, run_id, name) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    # one event file per session: the reader's order across files follows their names, not
    # the steps (two sessions within one second can come out swapped); each step once is
    # what counts, so compare in step order
    return {
        tag: sorted(((event.step, event.value) for event in events.Scalars(tag)), key=_step)
        for tag in events.Tags()["scalars"]
    }


def _step(point: tuple[int, float]) -> int:
    return point[0]


def assert_mlflow_matches_log(client, run, log):
    data = client.get_run(run.info.run_id).data
    for name, expected in log.metrics.items():
        assert mlflow_history(client, run.info.run_id, name) == sorted(expected), name
    for name, value in log.summary.items():
        assert data.metrics[name] == value, name
    assert data.params["learning_rate"] == "0.01"
    assert data.params["model.hidden"] == "16"  # nested again, flattened MLflow's way
    assert data.params["dataset"] == "toy-regression"


def float32(value: float) -> float:
    """``value`` as TensorBoard stores it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def assert_tensorboard_matches_log(logdir, log):
    scalars = tensorboard_scalars(logdir)
    for name, expected in log.metrics.items():
        assert scalars[name] == [(step, float32(value)) for step, value in expected], name
    for name, value in log.summary.items():
        assert scalars[name][-1][1] == float32(value), name


def test_sync_sends_every_point_once_even_when_run_twice(env, server, capsys):
    trainer = run_training("out")
    trainer.evaluate()
    log = read_run(RUN)
    assert main(SYNC) == 0
    out = capsys.readouterr().out
    assert "  mlflow: sent 8 record(s) in 2 session(s), " in out
    assert "  tensorboard: sent 8 record(s) in 2 session(s), " in out
    client, [run] = mlflow_runs(server, env.name)
    assert run.info.status == "FINISHED" and run.info.run_name == "conformance"
    assert f"/runs/{run.info.run_id}" in out
    assert_mlflow_matches_log(client, run, log)
    logdir = env / RUN / "tensorboard"
    assert_tensorboard_matches_log(logdir, log)
    counts = {name: len(points) for name, points in tensorboard_scalars(logdir).items()}

    assert main(SYNC) == 0
    assert "  mlflow: up to date (" in capsys.readouterr().out
    client, [again] = mlflow_runs(server, env.name)
    assert again.info.run_id == run.info.run_id
    assert_mlflow_matches_log(client, again, log)  # no duplicate in any metric history
    assert {n: len(p) for n, p in tensorboard_scalars(logdir).items()} == counts


CRASH = textwrap.dedent(
    """
    import os, sys
    from trackmux import TrainerCallback
    from trackmux.testing import run_training

    class Die(TrainerCallback):  # killed outright: no finish record
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == 7:
                os._exit(9)

    run_training(sys.argv[1], callbacks=[Die()])
    """
)


def test_a_crashed_run_is_killed_in_mlflow_and_continued_after_its_resume(env, server):
    done = run_child([sys.executable, "-c", CRASH, "out"], check=False)
    assert done.returncode == 9, describe_child(done)
    assert main(SYNC) == 0
    client, [run] = mlflow_runs(server, env.name)
    assert run.info.status == "KILLED"
    crashed = read_run(RUN)
    assert crashed.status is None
    assert_mlflow_matches_log(client, run, crashed)
    assert_tensorboard_matches_log(env / RUN / "tensorboard", crashed)

    run_training("out", resume=True)  # from checkpoint-4: logs step 6 again, then 8
    assert main(SYNC) == 0
    client, [resumed] = mlflow_runs(server, env.name)
    assert resumed.info.run_id == run.info.run_id
    assert resumed.info.status == "FINISHED"
    log = read_run(RUN)
    # TensorBoard purged the crashed run's step 6 when the resumed session reopened it
    assert_tensorboard_matches_log(env / RUN / "tensorboard", log)
    # MLflow cannot delete points: step 6 was synced before the resume and again after it
    # (docs/sync.md says so); every other point is there once
    steps = [s for s, _ in mlflow_history(client, run.info.run_id, "train/loss")]
    assert steps == [2, 4, 6, 6, 8]
    assert mlflow_history(client, run.info.run_id, "eval/loss") == log.history("eval/loss")
    assert read_state(RUN)["trackers"]["mlflow"]["status"] == "success"


def test_an_interrupted_and_resumed_run_synced_afterwards_has_each_step_once(env, server):
    with pytest.raises(KeyboardInterrupt):
        run_training("out", callbacks=[StopAt(7, KeyboardInterrupt())])
    run_training("out", resume=True)
    assert main(SYNC) == 0
    client, [run] = mlflow_runs(server, env.name)
    log = read_run(RUN)
    assert [s for s, _ in log.history("train/loss")] == [2, 4, 6, 8]
    assert_mlflow_matches_log(client, run, log)
    assert_tensorboard_matches_log(env / RUN / "tensorboard", log)
    assert run.info.status == "FINISHED"


def test_an_artifact_reaches_the_mlflow_server(env, server):
    run_training("out", tracker_artifacts="checkpoint")
    assert main(SYNC) == 0
    client, [run] = mlflow_runs(server, env.name)
    stored = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
    assert stored == {"checkpoint-4", "checkpoint-8"}


# -- docs/sync.md, run as written ---------------------------------------------------------------

RUNNABLE = re.compile(r"<!-- runnable -->\n```(python|console)\n(.*?)^```$", re.S | re.M)
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")
NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def same_shape(text: str, cwd: Path) -> str:
    """The line with run ids and numbers masked, the working directory as the page's
    /path/to."""
    text = HEX_ID.sub("RUN_ID", text.replace(str(cwd), "/path/to"))
    return NUMBER.sub("N", text)


def test_sync_page_runs_as_written(trackmux_env, monkeypatch, capsys):
    # the page syncs into MLflow's default local store: no tracking URI
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    page = (DOCS / "sync.md").read_text(encoding="utf-8")
    blocks = RUNNABLE.findall(page)
    assert [language for language, _ in blocks] == [
        "python",
        "console",
        "console",
        "python",
        "python",
    ]
    namespace: dict = {"__name__": "sync_page"}
    for number, (language, block) in enumerate(blocks, 1):
        if language == "python":
            exec(compile(block, f"docs/sync.md (block {number})", "exec"), namespace)  # noqa: S102
            continue
        [command, *shown] = block.splitlines()
        assert command.startswith("$ trackmux ")
        capsys.readouterr()
        assert main(shlex.split(command[2:])[1:]) == 0, command
        out = capsys.readouterr().out.splitlines()
        cwd = trackmux_env
        assert [same_shape(line, cwd) for line in out] == [same_shape(s, cwd) for s in shown]
    assert (trackmux_env / "out" / "mlflow.db").is_file()
