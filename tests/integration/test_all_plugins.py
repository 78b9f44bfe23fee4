"""Everything installed together (nox -s integration): report_to="all" end to end.

Every plugin under plugins/ must be installed, available and chosen by "all"; one training
reaches every tracker; each tracker records a run identity and says where its data is."""

import pathlib

import pytest

from trackmux.plugins import get_registry
from trackmux.runlog import find_runs, read_run
from trackmux.testing import run_training

PLUGIN_DIRS = sorted(pathlib.Path(__file__).parents[2].joinpath("plugins").glob("trackmux-*"))


def entry_point_names():
    """The report_to names of every plugin meant to share this environment (a plugin whose
    pyproject says ``[tool.trackmux] install-with-others = false`` is tested alone)."""
    import tomllib

    names = []
    for directory in PLUGIN_DIRS:
        pyproject = tomllib.loads((directory / "pyproject.toml").read_text())
        if not pyproject.get("tool", {}).get("trackmux", {}).get("install-with-others", True):
            continue
        names += list(pyproject["project"].get("entry-points", {}).get("trackmux", {}))
    return names


def test_every_plugin_is_installed_and_available():
    registry = get_registry(refresh=True)
    for name in entry_point_names():
        info = registry.get(name)
        assert info is not None, f"plugin {name!r} is not installed in this environment"
        assert info.available, f"plugin {name!r} is installed but unavailable: {info.reason}"


def test_report_to_all_reaches_every_tracker(trackmux_env):
    # a generous deadline, not a budget: train() waits for the delivery process to have
    # started every tracker it feeds (their "where" is in the run's state file)
    trainer = run_training(
        trackmux_env / "out", report_to="all", tracker_strict=True, tracker_close_timeout=600
    )
    chosen = {tracker.name for tracker in trainer.trackers.trackers}
    unconfigured = {
        name
        for name in entry_point_names()
        if get_registry().get(name).tracker_class.unconfigured_reason()
    }
    assert chosen == {"jsonl", *entry_point_names()} - unconfigured
    log = read_run(find_runs(trackmux_env / "out")[-1])
    assert log.status == "success"
    assert [step for step, _ in log.history("train/loss")] == [2, 4, 6, 8]
    for name, where in trainer.trackers.where():
        assert where, f"tracker {name!r} did not say where its data is"


@pytest.mark.parametrize("seconds", ["3"])
def test_demo_with_every_plugin(trackmux_env, capsys, monkeypatch, seconds):
    import functools

    from trackmux import training_args
    from trackmux.cli import main

    # a generous deadline, not a budget: on a loaded machine a backend's first start can take
    # longer than the default 30 s, and the test checks every tracker said where its data is
    arguments = functools.partial(training_args.TrainingArguments, tracker_close_timeout=600)
    monkeypatch.setattr(training_args, "TrainingArguments", arguments)  # what the demo reads

    assert main(["demo", "--output-dir", str(trackmux_env / "demo"), "--seconds", seconds]) == 0
    out = capsys.readouterr().out
    for name in entry_point_names():
        if not get_registry().get(name).tracker_class.unconfigured_reason():
            assert f"  {name}" in out, f"the demo did not report where {name!r} put its data"


def _tensorboard_metrics(tracker):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(tracker.logging_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _mlflow_metrics(tracker, names):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracker.tracking_uri)
    return {
        name: [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, name)]
        for name in names
    }


def _dvclive_metrics(tracker, names):
    import csv

    metrics = {}
    for name in names:
        path = pathlib.Path(tracker.directory, "plots", "metrics", f"{name}.tsv")
        with path.open() as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        leaf = name.rsplit("/", 1)[-1]
        metrics[name] = [(int(row["step"]), float(row[leaf])) for row in rows]
    return metrics


def test_every_local_backend_received_every_metric_of_every_logged_step(trackmux_env):
    """Issue 4's check: mlflow, dvclive, codecarbon and tensorboard together, each read back
    with its own reader and compared with the jsonl log of the same run."""
    names = ["jsonl", "mlflow", "dvclive", "codecarbon", "tensorboard"]
    # read back through the tracker objects: they must run in this process (thread mode);
    # tests/integration/test_delivery_backends.py reads the delivery process's backends
    trainer = run_training(trackmux_env / "out", report_to=names, tracker_delivery="thread")
    trackers = {tracker.name: tracker for tracker in trainer.trackers.trackers}
    assert sorted(trackers) == sorted(names)
    log = read_run(find_runs(trackmux_env / "out")[-1])
    expected = log.metrics
    assert [step for step, _ in expected["train/loss"]] == [2, 4, 6, 8]
    received = {
        "tensorboard": _tensorboard_metrics(trackers["tensorboard"]),
        "mlflow": _mlflow_metrics(trackers["mlflow"], expected),
        "dvclive": _dvclive_metrics(trackers["dvclive"], expected),
    }
    for backend, metrics in received.items():
        for name, history in expected.items():
            got = metrics.get(name)
            assert got is not None, f"{backend} has no {name!r}"
            assert [s for s, _ in got] == [s for s, _ in history], f"{backend}: steps of {name}"
            for (_, value), (_, want) in zip(got, history):
                assert value == pytest.approx(want, rel=1e-6), f"{backend}: {name}"
    # codecarbon is a source: its figures reached the run log (and so every tracker)
    assert log.summary["codecarbon/emissions"] > 0
    assert received["tensorboard"]["codecarbon/emissions"][-1][0] == 8


def _plugin_tests(plugin: str, filename: str):
    """A plugin's own test module, for its backend reader (the plugin tests are not a
    package; each reads its backend with the backend's own format)."""
    import importlib.util
    import sys

    path = pathlib.Path(__file__).parents[2] / "plugins" / f"trackmux-{plugin}" / "tests" / filename
    spec = importlib.util.spec_from_file_location(f"_trackmux_{plugin}_reader", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def test_every_hosted_backend_received_every_metric_offline(trackmux_env):
    """Issue 5's check: wandb, comet_ml, neptune and clearml together and offline, each read
    back from its offline files and compared with the jsonl log of the same run."""
    names = ["jsonl", "wandb", "comet_ml", "neptune", "clearml"]
    # read back through the tracker objects: they must run in this process (thread mode)
    trainer = run_training(trackmux_env / "out", report_to=names, tracker_delivery="thread")
    trackers = {tracker.name: tracker for tracker in trainer.trackers.trackers}
    assert sorted(trackers) == sorted(names)
    expected = read_run(find_runs(trackmux_env / "out")[-1]).metrics
    wandb_runs = _plugin_tests("wandb", "test_wandb.py").read_runs(trackmux_env / "out")
    clearml = _plugin_tests("clearml", "test_clearml.py")
    received = {
        "wandb": wandb_runs[trackers["wandb"].run.id].metrics(),
        "comet_ml": _plugin_tests("comet-ml", "test_comet.py")
        .read_experiments(trackmux_env / "out" / "comet")
        .metrics,
        "neptune": {
            name: points
            for run in _plugin_tests("neptune", "test_neptune.py").offline_runs(
                trackers["neptune"].data_directory
            )
            for name, points in run.series.items()
        },
        "clearml": clearml.read_session(trackers["clearml"].task.get_offline_mode_folder())[
            "metrics"
        ],
    }
    for backend, metrics in received.items():
        for name, history in expected.items():
            got = metrics.get(name)
            assert got is not None, f"{backend} has no {name!r}; it has {sorted(metrics)}"
            assert [s for s, _ in got] == [s for s, _ in history], f"{backend}: steps of {name}"
            for (_, value), (_, want) in zip(got, history):
                assert value == pytest.approx(want, rel=1e-6), f"{backend}: {name}"


def test_trackio_and_swanlab_beside_the_others_read_back_exactly(trackmux_env):
    """Issue 17's check: Trackio and SwanLab, whose backends keep process-wide state, in one
    training with other trackers, each read back with its own reader and compared exactly
    with the jsonl log of the same run."""
    names = ["jsonl", "trackio", "swanlab", "tensorboard", "mlflow", "wandb"]
    out = trackmux_env / "out"
    # train() returns once the delivery process has delivered and closed every run
    trainer = run_training(out, report_to=names, tracker_close_timeout=600)
    assert sorted(tracker.name for tracker in trainer.trackers.trackers) == sorted(names)
    log = read_run(find_runs(out)[-1])
    expected = {name: [tuple(point) for point in history] for name, history in log.metrics.items()}
    expected.update({name: [(8, value)] for name, value in log.summary.items()})
    # where each run is: its identity (paths relative to the output directory), whichever
    # process ran the tracker
    runs = trainer.state.tracker_runs
    trackio = _plugin_tests("trackio", "test_trackio.py").read_store(out / runs["trackio"]["dir"])
    swanlab = _plugin_tests("swanlab", "test_swanlab.py").read_run(
        out / runs["swanlab"]["log_dir"], runs["swanlab"]["run_id"]
    )
    assert trackio[runs["trackio"]["run_id"]]["metrics"] == expected
    assert swanlab.metrics == expected
    assert swanlab.status == "success"
