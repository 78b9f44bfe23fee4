"""The TensorBoard plugin against real TensorBoard event files, read back with TensorBoard's
own EventAccumulator."""

from __future__ import annotations

import logging
import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from trackmux import TrainerCallback
from trackmux.testing import (
    RunData,
    TrackerConformance,
    assert_found,
    assert_unavailable,
    discovery_report,
    jsonl_log,
    replace_tracker_identity,
    run_training,
)
from trackmux.testing.conformance import HYPERPARAMETERS, TRAINING_DEFAULTS
from trackmux.tracker import run_dir_name
from trackmux_tensorboard.tracker import LOGGING_DIR_ENV, TensorBoardTracker

SESSION_START_TAG = "_hparams_/session_start_info"


@pytest.fixture(autouse=True)
def _no_logging_dir_from_the_outside(monkeypatch):
    monkeypatch.delenv(LOGGING_DIR_ENV, raising=False)


def event_dirs(root) -> list[str]:
    """Every directory under ``root`` holding TensorBoard event files: one per run."""
    return sorted(
        directory
        for directory, _, files in os.walk(root)
        if any(name.startswith("events.out.tfevents.") for name in files)
    )


def accumulate(logdir) -> EventAccumulator:
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def texts(events: EventAccumulator, tag: str) -> list[str]:
    """The texts of ``add_text(tag, ...)``, which torch stores under ``<tag>/text_summary``."""
    return [
        event.tensor_proto.string_val[0].decode() for event in events.Tensors(f"{tag}/text_summary")
    ]


def hparams(events: EventAccumulator) -> dict:
    content = events.PluginTagToContent("hparams")[SESSION_START_TAG]
    values = HParamsPluginData.FromString(content).session_start_info.hparams
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in values.items()}


def scalars(events: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


class InterruptAt(TrainerCallback):
    """Ctrl-C at the start of ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt


def train(output_dir, *, tracker_config=None, callbacks=(), resume=None, **overrides):
    """A toy training that finds the tracker through ``report_to``, as users do."""
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing import RegressionDataset, TinyRegressor

    arguments = {
        **TRAINING_DEFAULTS,
        "report_to": ["jsonl", "tensorboard"],
        "output_dir": str(output_dir),
        **overrides,
    }
    trainer = Trainer(
        model=TinyRegressor(),
        args=TrainingArguments(**arguments),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        callbacks=list(callbacks),
        tracker_config=tracker_config,
        hyperparameters=HYPERPARAMETERS,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


class TestTensorBoardConformance(TrackerConformance):
    tracker_class = TensorBoardTracker
    rel_tolerance = 1e-6  # scalars are stored as float32
    purges_after_resume = True  # SummaryWriter(purge_step=...) on resume

    def make_tracker(self, tmp_path):
        return TensorBoardTracker()

    def read_back(self, tracker, tmp_path):
        events = accumulate(tracker.logging_dir)
        return RunData(
            params=hparams(events),
            metrics=scalars(events),
            status=texts(events, "status")[-1],
            runs=len(event_dirs(tmp_path)),
        )


def test_found_through_its_entry_point_and_selected_by_report_to(trackmux_env):
    assert_found(
        "tensorboard",
        distribution="trackmux-tensorboard",
        tracker_class=TensorBoardTracker,
        mode="local",
    )

    trainer = train(trackmux_env / "out", report_to=["tensorboard"])
    logdir = trackmux_env / "out" / "runs" / "conformance" / "tensorboard"
    assert event_dirs(trackmux_env) == [str(logdir)]
    # the run journal is always kept (issue 17), beside the tracker report_to names
    where = dict(trainer.trackers.where())
    assert where.pop("jsonl").endswith("events.jsonl (trackmux show " + str(logdir.parent) + ")")
    assert where == {"tensorboard": f"tensorboard --logdir {logdir}"}


def test_every_scalar_with_its_step_and_value(trackmux_env):
    train(trackmux_env / "out")
    log = jsonl_log(trackmux_env / "out")
    events = accumulate(trackmux_env / "out" / "runs" / "conformance" / "tensorboard")
    stored = scalars(events)

    loss = stored["train/loss"]
    assert [step for step, _ in loss] == [2, 4, 6, 8]
    assert [value for _, value in loss] == pytest.approx(
        [value for _, value in log.history("train/loss")], rel=1e-6
    )
    assert [step for step, _ in stored["eval/loss"]] == [4, 8]
    # the end-of-training values are scalars at the final step
    assert log.summary and "train/train_runtime" in log.summary
    for name, value in log.summary.items():
        assert stored[name] == [(8, pytest.approx(value, rel=1e-6))], name
    # nothing but trackmux's metrics: no scalar written on the side by the hparams summary
    assert set(stored) == set(log.metrics) | set(log.summary)


def test_config_as_hparams_and_as_a_text_table(trackmux_env):
    train(trackmux_env / "out")
    log = jsonl_log(trackmux_env / "out")
    events = accumulate(trackmux_env / "out" / "runs" / "conformance" / "tensorboard")

    # every config value the jsonl log holds, None excepted (HParams has no null)
    assert hparams(events) == {key: value for key, value in log.config.items() if value is not None}
    (table,) = texts(events, "config")
    lines = table.splitlines()
    assert lines[:2] == ["| param | value |", "|---|---|"]
    assert "| learning_rate | 0.01 |" in lines
    assert "| dataset | toy-regression |" in lines
    assert len(lines) == 2 + len(log.config)


@pytest.mark.parametrize("source", ["code", "environment", "default"])
def test_logging_dir_precedence(trackmux_env, monkeypatch, source):
    code, env = trackmux_env / "from-code", trackmux_env / "from-env"
    monkeypatch.setenv("HOME", str(trackmux_env))
    if source != "default":
        monkeypatch.setenv(LOGGING_DIR_ENV, "~/from-env")  # ~ is expanded, as in Hugging Face
    tracker_config = {"tensorboard": {"logging_dir": str(code)}} if source == "code" else None
    train(trackmux_env / "out", tracker_config=tracker_config, max_steps=2, eval_strategy="no")
    default = trackmux_env / "out" / "runs" / "conformance" / "tensorboard"
    expected = {"code": code, "environment": env, "default": default}[source]
    assert event_dirs(trackmux_env) == [str(expected)]
    assert [step for step, _ in scalars(accumulate(expected))["train/loss"]] == [2]


def test_resume_reopens_the_directory_the_checkpoint_names(trackmux_env):
    first = trackmux_env / "first"
    with pytest.raises(KeyboardInterrupt):
        run_training(
            trackmux_env / "out",
            TensorBoardTracker(logging_dir=str(first)),
            callbacks=[InterruptAt(6)],
        )
    # a logging_dir outside output_dir is continued only while it is still the configured
    # one: a checkpoint is data, not instructions (issue 15)
    resumed = TensorBoardTracker(logging_dir=str(first))
    run_training(trackmux_env / "out", resumed, resume=True)

    assert resumed.logging_dir == str(first)
    assert event_dirs(trackmux_env) == [str(first)]
    events = accumulate(first)
    assert len([name for name in os.listdir(first) if name.startswith("events.")]) == 2
    assert [step for step, _ in scalars(events)["train/loss"]] == [2, 4, 6, 8]
    assert texts(events, "status") == ["killed", "success"]
    assert hparams(events)["max_steps"] == 8


def test_evaluate_after_train_writes_into_the_same_run(trackmux_env):
    trainer = train(trackmux_env / "out")
    trainer.evaluate()
    logdir = trackmux_env / "out" / "runs" / "conformance" / "tensorboard"
    assert event_dirs(trackmux_env) == [str(logdir)]
    events = accumulate(logdir)
    assert [step for step, _ in scalars(events)["eval/loss"]] == [4, 8, 8]
    assert texts(events, "status") == ["success", "success"]


def test_import_and_discovery_load_neither_tensorboard_nor_torch():
    report = discovery_report("tensorboard", "trackmux_tensorboard", ("torch", "tensorboard"))
    assert (report["available"], report["heavy"]) == (True, [])


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", "backend missing: tensorboard is not installed"),
        ("too-old", "unsupported backend: tensorboard 2.9.1 is installed, tensorboard>=2.10"),
    ],
    ids=["missing", "too-old"],
)
def test_reports_itself_unavailable_without_a_usable_tensorboard(case, reason):
    version = None if case == "missing" else "2.9.1"
    fix = 'pip install "tensorboard>=2.10"'
    assert_unavailable(
        "tensorboard", "tensorboard", "tensorboard", version=version, reason=reason, fix=fix
    )


def test_a_session_added_within_the_same_second_sorts_after_the_first(trackmux_env, monkeypatch):
    """TensorBoard orders a run's event files by name (creation second, then a counter
    compared as text): a resumed session must come after the one its purge applies to."""
    from tensorboard.summary.writer import event_file_writer

    import trackmux

    # the files would be "...<pid>.9" then "...<pid>.10": "10" sorts first as text
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    logdir = trackmux_env / "tb"
    first = TensorBoardTracker(logging_dir=str(logdir))
    with trackmux.start_run("none", trackers=[first], output_dir=trackmux_env) as run:
        for step in (1, 2, 3):
            run.log({"loss": float(step)}, step=step)
    resumed = TensorBoardTracker(logging_dir=str(logdir))
    with trackmux.start_run(
        "none", trackers=[resumed], output_dir=trackmux_env, resume=run.identities, step=2
    ) as again:
        again.log({"loss": 30.0}, step=3)  # step 3 again, after the checkpoint at 2
    files = sorted(name for name in os.listdir(logdir) if name.startswith("events.out"))
    assert len(files) == 2
    assert files == sorted(files, key=lambda name: os.path.getmtime(logdir / name))
    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]


# -- checkpoints and run names are data, never instructions (issue 15, rows 1, 2 and 7) --------


def _refusals(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]


def test_checkpoint_naming_another_logging_dir_opens_a_new_run_there(trackmux_env, caplog):
    """A logging_dir outside output_dir that is no longer the configured one is refused."""
    first = trackmux_env / "first"
    run_training(trackmux_env / "out", TensorBoardTracker(logging_dir=str(first)))
    second = trackmux_env / "second"
    resumed = TensorBoardTracker(logging_dir=str(second))
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        run_training(trackmux_env / "out", resumed, resume=True)
    assert resumed.logging_dir == str(second)
    assert event_dirs(trackmux_env) == [str(first), str(second)]
    assert texts(accumulate(first), "status") == ["success"]  # the first run, untouched
    assert texts(accumulate(second), "status") == ["success"]
    (refused,) = _refusals(caplog)
    assert "'tensorboard'" in refused and "logging_dir" in refused


@pytest.mark.parametrize("where", ["../../elsewhere", "ABSOLUTE", "runs/../../../elsewhere"])
def test_checkpoint_logging_dir_outside_output_dir_is_refused(trackmux_env, caplog, where):
    out = trackmux_env / "a" / "b" / "out"
    elsewhere = trackmux_env / "a" / "elsewhere"
    where = str(elsewhere) if where == "ABSOLUTE" else where
    run_training(out, TensorBoardTracker())
    stored = replace_tracker_identity(out / "checkpoint-4", "tensorboard", {"logging_dir": where})
    # stored relative to output_dir, so a moved output_dir still resumes
    assert stored == {"logging_dir": os.path.join("runs", "conformance", "tensorboard")}

    resumed = TensorBoardTracker()
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        run_training(out, resumed, resume=str(out / "checkpoint-4"))
    assert not elsewhere.exists()
    first = out / "runs" / "conformance" / "tensorboard"
    # a new run, in a directory of its own inside output_dir
    own = out / "runs" / "conformance-2" / "tensorboard"
    assert event_dirs(trackmux_env) == sorted([str(first), str(own)])
    assert resumed.logging_dir == str(own)
    (refused,) = _refusals(caplog)
    assert "'tensorboard'" in refused and "logging_dir" in refused and where in refused
    events = accumulate(own)
    assert texts(events, "status") == ["success"]
    assert [step for step, _ in scalars(events)["train/loss"]] == [6, 8]
    assert [step for step, _ in scalars(accumulate(first))["train/loss"]] == [2, 4, 6, 8]


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/tmp/abs", "x" * 300, "nul\0here"])
def test_run_name_never_leaves_output_dir(trackmux_env, name):
    out = trackmux_env / "a" / "b" / "out"
    train(out, run_name=name, max_steps=2, eval_strategy="no")
    own = out / "runs" / run_dir_name(name) / "tensorboard"
    assert event_dirs(trackmux_env) == [str(own)]
    events = accumulate(own)
    assert [step for step, _ in scalars(events)["train/loss"]] == [2]
    assert texts(events, "status") == ["success"]
    assert jsonl_log(out).status == "success"
