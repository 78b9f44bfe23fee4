"""TrackmuxCallback with the real Hugging Face transformers Trainer on a tiny torch model (CPU):
every log of ``trainer.state.log_history`` arrives in the jsonl run log, TensorBoard and a
real MLflow server at its step; failures, resume, evaluate/predict and the docs example."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from framework_support import (  # noqa: E402
    close_to,
    doc_examples,
    import_error_without,
    mlflow_metrics,
    run_script,
    tensorboard_scalars,
)
from transformers import (  # noqa: E402
    PretrainedConfig,
    Trainer,
    TrainerCallback,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from trackmux.integrations.transformers import RUN_FILE, TrackmuxCallback  # noqa: E402
from trackmux.runlog import find_runs, read_run  # noqa: E402
from trackmux.testing import describe_child  # noqa: E402
from trackmux.testing.toy import RegressionDataset, TinyRegressor  # noqa: E402

FRAMEWORK_DIR = Path(__file__).resolve().parent


class Regressor(TinyRegressor):
    """The toy model with a transformers config object, as a transformers model has."""

    def __init__(self):
        super().__init__()
        self.config = PretrainedConfig(features=8, hidden=16)


class RaiseAt(TrainerCallback):
    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise self.error


def make_trainer(output_dir, callback, *, callbacks=(), **overrides) -> Trainer:
    arguments = {
        "output_dir": str(output_dir),
        "report_to": "none",
        "max_steps": 8,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 4,
        "save_steps": 4,
        "per_device_train_batch_size": 4,
        "learning_rate": 0.01,
        "use_cpu": True,
        "disable_tqdm": True,
        **overrides,
    }
    set_seed(0)
    return Trainer(
        model=Regressor(),
        args=TrainingArguments(**arguments),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        callbacks=[callback, *callbacks],
    )


def trackmux_name(key: str) -> str:
    """The naming of trackmux's own Trainer: eval_x -> eval/x, test_x -> test/x, x -> train/x."""
    for prefix in ("eval", "test"):
        if key.startswith(prefix + "_"):
            return f"{prefix}/{key[len(prefix) + 1 :]}"
    return f"train/{key}"


def expected_from(log_history: list[dict]) -> tuple[dict, dict]:
    """What the run log must hold: every logged value at its step, the final train log as
    the summary."""
    metrics: dict[str, list] = {}
    summary: dict[str, float] = {}
    for entry in log_history:
        values = {k: v for k, v in entry.items() if k not in ("epoch", "step")}
        if "train_runtime" in entry:
            summary.update({trackmux_name(k): v for k, v in values.items()})
            continue
        for key, value in values.items():
            metrics.setdefault(trackmux_name(key), []).append((entry["step"], value))
    return metrics, summary


def only_run(output_dir):
    runs = find_runs(output_dir)
    assert len(runs) == 1, runs
    return read_run(runs[0])


def test_import_without_transformers_names_the_extra(tmp_path):
    assert "pip install 'trackmux[transformers]'" in import_error_without("transformers", tmp_path)


def test_every_log_reaches_the_run_log(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"], config={"dataset": "toy"})
    trainer = make_trainer(trackmux_env / "out", callback, run_name="tiny")
    trainer.train()

    metrics, summary = expected_from(trainer.state.log_history)
    assert set(metrics) == {
        "train/loss",
        "train/grad_norm",
        "train/learning_rate",
        "eval/loss",
        "eval/runtime",
        "eval/samples_per_second",
        "eval/steps_per_second",
    }
    assert [step for step, _ in metrics["train/loss"]] == list(range(1, 9))
    assert [step for step, _ in metrics["eval/loss"]] == [4, 8]
    assert {"train/train_runtime", "train/train_loss", "train/total_flos"} <= set(summary)

    run = only_run(trackmux_env / "out")
    assert run.name == "tiny"
    assert run.path == str(trackmux_env / "out" / "runs" / "tiny")
    assert run.metrics == metrics
    assert run.summary == summary
    assert run.status == "success"
    assert run.config["learning_rate"] == 0.01
    assert run.config["max_steps"] == 8
    assert run.config["model/hidden"] == 16
    assert run.config["model_class"] == "Regressor"
    assert run.config["dataset"] == "toy"
    epochs = {r["step"]: r["epoch"] for r in run.records if r["type"] == "metrics"}
    assert epochs[4] == 0.5 and epochs[8] == 1.0
    # every checkpoint records the run, so a resume can continue it
    saved = json.loads((trackmux_env / "out" / "checkpoint-4" / RUN_FILE).read_text())
    assert saved == {"run_name": "tiny", "step": 4, "identities": {"jsonl": {"run": "tiny"}}}


def test_tensorboard_gets_the_same_points(trackmux_env):
    pytest.importorskip("trackmux_tensorboard")
    callback = TrackmuxCallback(report_to=["jsonl", "tensorboard"])
    make_trainer(trackmux_env / "out", callback, run_name="tb").train()

    run = only_run(trackmux_env / "out")
    scalars = tensorboard_scalars(Path(run.path) / "tensorboard")
    for name, history in run.metrics.items():
        assert close_to(scalars[name], history), name
    assert close_to(scalars["train/train_loss"], [(8, run.summary["train/train_loss"])])


def test_mlflow_gets_the_same_points(trackmux_env, mlflow_server):
    from mlflow.tracking import MlflowClient

    callback = TrackmuxCallback(
        report_to=["jsonl", "mlflow"],
        tracker_config={
            "mlflow": {"tracking_uri": mlflow_server, "experiment_name": "transformers"}
        },
    )
    make_trainer(trackmux_env / "out", callback, run_name="hf-mlflow").train()

    run = only_run(trackmux_env / "out")
    run_id = callback.last_run.identities["mlflow"]["run_id"]
    stored = mlflow_metrics(mlflow_server, run_id, [*run.metrics, *run.summary])
    for name, history in run.metrics.items():
        assert stored[name] == history, name
    for name, value in run.summary.items():
        assert stored[name] == [(8, value)], name
    mlflow_run = MlflowClient(mlflow_server).get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == "hf-mlflow"
    assert mlflow_run.data.params["learning_rate"] == "0.01"
    assert mlflow_run.data.params["model.hidden"] == "16"  # its separator is "."


def test_an_exception_inside_guard_fails_the_run_at_once(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    trainer = make_trainer(
        trackmux_env / "out", callback, callbacks=[RaiseAt(6, RuntimeError("boom"))]
    )
    with pytest.raises(RuntimeError, match="boom"), callback.guard():
        trainer.train()

    run = only_run(trackmux_env / "out")
    assert run.status == "failed"
    assert [step for step, _ in run.metrics["train/loss"]] == [1, 2, 3, 4, 5]
    assert callback.run is None


def test_keyboard_interrupt_inside_guard_kills_the_run(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    trainer = make_trainer(
        trackmux_env / "out", callback, callbacks=[RaiseAt(3, KeyboardInterrupt())]
    )
    with pytest.raises(KeyboardInterrupt), callback.guard():
        trainer.train()
    assert only_run(trackmux_env / "out").status == "killed"


class SigtermAt(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_inside_guard_kills_the_run(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    trainer = make_trainer(trackmux_env / "out", callback, callbacks=[SigtermAt()])
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), callback.guard():
        trainer.train()
    assert signal.getsignal(signal.SIGTERM) is before
    run = only_run(trackmux_env / "out")
    assert run.status == "killed"
    assert [step for step, _ in run.metrics["train/loss"]] == [1, 2]


def test_a_new_train_fails_the_run_a_caught_exception_left_open(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    failing = make_trainer(
        trackmux_env / "out", callback, callbacks=[RaiseAt(3, RuntimeError())], run_name="first"
    )
    with pytest.raises(RuntimeError):
        failing.train()
    assert read_run(trackmux_env / "out" / "runs" / "first").status is None  # still open

    make_trainer(trackmux_env / "out", callback, run_name="second").train()
    assert read_run(trackmux_env / "out" / "runs" / "first").status == "failed"
    assert read_run(trackmux_env / "out" / "runs" / "second").status == "success"


SCRIPT = """
from transformers import PretrainedConfig, Trainer, TrainerCallback, TrainingArguments
from trackmux.integrations.transformers import TrackmuxCallback
from trackmux.testing.toy import RegressionDataset, TinyRegressor

class Stop(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise {error}

model = TinyRegressor()
model.config = PretrainedConfig(hidden=16)
args = TrainingArguments("out", report_to="none", max_steps=8, logging_steps=1, use_cpu=True,
                         run_name="crash", disable_tqdm=True)
callback = TrackmuxCallback(report_to=["jsonl"])
Trainer(model=model, args=args, train_dataset=RegressionDataset(32),
        callbacks=[callback, Stop()]).train()
"""


@pytest.mark.parametrize(
    ("error", "status"),
    [("RuntimeError('crash')", "failed"), ("KeyboardInterrupt()", "killed")],
    ids=["exception", "ctrl-c"],
)
def test_an_uncaught_error_closes_the_run_at_exit(trackmux_env, error, status):
    result = run_script(SCRIPT.format(error=error), trackmux_env)
    assert result.returncode != 0, describe_child(result)
    assert error.split("(")[0] in result.stderr, describe_child(result)  # the traceback too
    run = read_run(trackmux_env / "out" / "runs" / "crash")
    assert run.status == status
    assert [step for step, _ in run.metrics["train/loss"]] == [1, 2]


def test_resume_continues_the_same_runs(trackmux_env):
    pytest.importorskip("trackmux_tensorboard")
    output_dir = trackmux_env / "out"
    first = TrackmuxCallback(report_to=["jsonl", "tensorboard"])
    crashing = make_trainer(
        output_dir, first, callbacks=[RaiseAt(7, RuntimeError("preempted"))], run_name="long"
    )
    with pytest.raises(RuntimeError), first.guard():
        crashing.train()

    # a new process would build everything anew: a new callback, a new Trainer
    second = TrackmuxCallback(report_to=["jsonl", "tensorboard"])
    resumed = make_trainer(output_dir, second, run_name="ignored-on-resume")
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-4"))

    run = only_run(output_dir)
    assert run.name == "long"
    assert run.statuses == ["failed", "success"]
    assert run.sessions == 2
    metrics, _ = expected_from(resumed.state.log_history)
    # each step once: 1-4 from the first training, 5-8 from the resumed one (its own 5, 6
    # replace the ones the crashed run logged after checkpoint-4)
    assert [step for step, _ in run.metrics["train/loss"]] == list(range(1, 9))
    assert run.metrics["train/loss"][4:] == metrics["train/loss"][-4:]
    assert run.metrics["eval/loss"] == metrics["eval/loss"]
    scalars = tensorboard_scalars(Path(run.path) / "tensorboard")
    assert close_to(scalars["train/loss"], run.metrics["train/loss"])


def test_resume_without_a_run_file_starts_new_runs(trackmux_env, caplog):
    output_dir = trackmux_env / "out"
    make_trainer(output_dir, TrackmuxCallback(report_to=["jsonl"]), run_name="old").train()
    (output_dir / "checkpoint-4" / RUN_FILE).unlink()
    trainer = make_trainer(output_dir, TrackmuxCallback(report_to=["jsonl"]), run_name="new")
    trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-4"))
    assert "trackers start new runs" in caplog.text
    run = read_run(output_dir / "runs" / "new")
    assert run.status == "success"
    assert [step for step, _ in run.metrics["train/loss"]] == [5, 6, 7, 8]


def test_evaluate_and_predict_after_training_reopen_the_run(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    trainer = make_trainer(trackmux_env / "out", callback, run_name="tiny")
    trainer.train()
    evaluation = trainer.evaluate()
    prediction = trainer.predict(RegressionDataset(8, seed=2))

    run = only_run(trackmux_env / "out")
    assert run.sessions == 3
    assert run.statuses == ["success", "success", "success"]
    assert run.metrics["eval/loss"][-1] == (8, evaluation["eval_loss"])
    assert run.metrics["test/loss"] == [(8, prediction.metrics["test_loss"])]
    assert [step for step, _ in run.metrics["train/loss"]] == list(range(1, 9))


def test_evaluate_alone_opens_and_closes_a_run(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    metrics = make_trainer(trackmux_env / "out", callback, run_name="eval-only").evaluate()
    run = only_run(trackmux_env / "out")
    assert run.status == "success"
    assert run.metrics["eval/loss"] == [(0, metrics["eval_loss"])]
    assert [r["kind"] for r in run.records if r["type"] == "start"] == ["evaluate"]


def test_the_trainer_reporting_itself_is_warned(trackmux_env, caplog):
    pytest.importorskip("tensorboard")
    callback = TrackmuxCallback(report_to=["jsonl"])
    caplog.set_level(logging.WARNING, logger="trackmux")
    make_trainer(trackmux_env / "out", callback, report_to=["tensorboard"], max_steps=2).train()
    warnings = [r.getMessage() for r in caplog.records if "reports to" in r.getMessage()]
    assert len(warnings) == 1
    assert 'report_to="none"' in warnings[0] and "tensorboard" in warnings[0]


def test_other_processes_report_nothing(trackmux_env):
    callback = TrackmuxCallback(report_to=["jsonl"])
    args = TrainingArguments(str(trackmux_env / "out"), report_to="none", use_cpu=True)
    state = TrainerState(is_world_process_zero=False)
    callback.on_train_begin(args, state, None, model=Regressor())
    callback.on_log(args, state, None, logs={"loss": 1.0})
    callback.on_save(args, state, None)
    callback.on_train_end(args, state, None)
    assert callback.run is None
    assert not (trackmux_env / "out" / "runs").exists()


def test_the_documented_example_runs(trackmux_env):
    blocks = doc_examples("integrations/transformers.md")
    assert len(blocks) == 1, "docs/integrations/transformers.md lost its runnable example"
    result = run_script(blocks[0], trackmux_env)
    assert result.returncode == 0, describe_child(result)
    run = read_run(trackmux_env / "out" / "runs" / "tiny-bert")
    assert run.status == "success"
    assert [step for step, _ in run.metrics["train/loss"]] == [2, 4, 6, 8]
    assert [step for step, _ in run.metrics["eval/loss"]] == [4, 8]
    assert run.config["model/model_type"] == "bert"
    assert "train/train_runtime" in run.summary
