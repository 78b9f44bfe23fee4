"""Issue 16: trackmux's Trainer as a drop-in for transformers'. A transformers training script
(dropin_script.py) runs with only its import changed and logs the same numbers step for step;
checkpoints cross over both ways; ``transformers_flow`` gives transformers' event sequence."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import transformers  # noqa: E402

import trackmux  # noqa: E402
from trackmux.testing import run_child  # noqa: E402
from trackmux.testing.toy import RegressionDataset, TinyRegressor  # noqa: E402
from trackmux.trainer_callback import EVENTS  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / "dropin_script.py"
IMPORT = "from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed"
TOLERANCE = 1e-5
#: timings differ from run to run, by nature
TIMING = ("runtime", "per_second")


def trackmux_script(directory: Path) -> Path:
    """dropin_script.py with its import line, and nothing else, changed to trackmux."""
    text = SCRIPT.read_text(encoding="utf-8")
    assert text.count(IMPORT) == 1
    path = directory / "dropin_script_trackmux.py"
    swapped = IMPORT.replace("from transformers", "from trackmux")
    path.write_text(text.replace(IMPORT, swapped), encoding="utf-8")
    return path


def run(script: Path, output_dir: Path, resume: Path | None = None) -> dict:
    command = [sys.executable, str(script), str(output_dir)]
    if resume is not None:
        command.append(str(resume))
    run_child(command, timeout=600)
    return json.loads((output_dir / "logged.json").read_text(encoding="utf-8"))


def numbers(entry: dict) -> dict:
    return {key: value for key, value in entry.items() if not key.endswith(TIMING)}


def assert_same_numbers(expected: dict, got: dict, where: str) -> None:
    assert set(numbers(got)) == set(numbers(expected)), where
    for key, value in numbers(expected).items():
        assert got[key] == pytest.approx(value, abs=TOLERANCE), (where, key)


def assert_same_history(expected: list[dict], got: list[dict], skip=()) -> None:
    assert [entry["step"] for entry in got] == [entry["step"] for entry in expected]
    for index, (want, have) in enumerate(zip(expected, got)):
        if index in skip:
            continue
        assert_same_numbers(want, have, f"log_history[{index}] (step {want['step']})")


def assert_same_weights(expected: dict, got: dict) -> None:
    import numpy as np

    assert set(got) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, atol=TOLERANCE, err_msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script trained by transformers and, with the import changed, by trackmux."""
    directory = tmp_path_factory.mktemp("dropin")
    return {
        "transformers": run(SCRIPT, directory / "transformers"),
        "trackmux": run(trackmux_script(directory), directory / "trackmux"),
        "directory": directory,
    }


def test_the_script_logs_the_same_numbers_step_for_step(runs):
    expected, got = runs["transformers"], runs["trackmux"]
    history = expected["log_history"]
    # the run the script describes: 3 epochs of 3 updates (9 batches, accumulation 4),
    # logged every step, evaluated every 2 steps and at the end
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 10))
    assert [e["step"] for e in history if "eval_loss" in e] == [2, 4, 6, 8, 9, 9]
    epochs = [round(e["epoch"], 3) for e in history if "loss" in e][:3]
    assert epochs == [0.444, 0.889, 1.0]  # batches read, not updates made
    assert_same_history(history, got["log_history"])
    assert_same_numbers(expected["evaluate"], got["evaluate"], "evaluate()")
    # predict() on data without labels: no loss and no compute_metrics, in both
    assert_same_numbers(expected["predict_metrics"], got["predict_metrics"], "predict()")
    assert not any("accuracy" in key for key in got["predict_metrics"])
    import numpy as np

    np.testing.assert_allclose(got["predictions"], expected["predictions"], atol=TOLERANCE)
    assert_same_weights(expected["weights"], got["weights"])


@pytest.mark.parametrize(
    "writer, reader", [("transformers", "trackmux"), ("trackmux", "transformers")]
)
def test_a_checkpoint_resumes_in_the_other_library(runs, writer, reader):
    """checkpoint-4 is in the middle of the second epoch: the resumed run needs the weights,
    optimizer, scheduler, RNG state (dropout) and trainer state to match the run it left."""
    directory = runs["directory"]
    checkpoint = directory / writer / "checkpoint-4"
    script = SCRIPT if reader == "transformers" else trackmux_script(directory)
    resumed = run(script, directory / f"{reader}-from-{writer}", resume=checkpoint)
    expected = runs[writer]
    # the last training entry is the summary of this train() call: its train_loss averages
    # the steps this call made (5-9), in both libraries
    summary = next(i for i, e in enumerate(expected["log_history"]) if "train_loss" in e)
    assert_same_history(expected["log_history"], resumed["log_history"], skip={summary})
    assert_same_numbers(expected["evaluate"], resumed["evaluate"], "evaluate()")
    assert_same_weights(expected["weights"], resumed["weights"])


def test_trainer_state_json_has_exactly_transformers_schema(runs):
    checkpoint = runs["directory"] / "trackmux" / "checkpoint-4"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert set(saved) == {f.name for f in dataclasses.fields(transformers.TrainerState)}
    assert "TrainerControl" in saved["stateful_callbacks"]
    state = transformers.TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    assert state.global_step == 4
    own = json.loads((checkpoint / "trackmux_state.json").read_text())
    assert set(own) == {"run_name", "tracker_runs", "tracker_runs_pending"}
    assert not (checkpoint / "training_args.bin").exists()  # a pickle: never written


# ------------------------------------------------------------------ transformers_flow


class Events(transformers.TrainerCallback):
    """Records (event, global_step); optionally stops training in on_train_begin."""

    def __init__(self, stop_at_begin: bool = False):
        self.events: list[tuple[str, int]] = []
        self.stop_at_begin = stop_at_begin


def _recording(event: str):
    def method(self, args, state, control, **kwargs):
        self.events.append((event, state.global_step))
        if event == "on_train_begin" and self.stop_at_begin:
            control.should_training_stop = True

    method.__name__ = event
    return method


for _event in EVENTS:
    if _event != "on_init_end" and hasattr(transformers.TrainerCallback, _event):
        setattr(Events, _event, _recording(_event))


def flow(library, tmp_path, stop_at_begin: bool, **extra) -> tuple[list, list]:
    recorder = Events(stop_at_begin)
    library.set_seed(0)
    model = TinyRegressor()
    model.config = transformers.PretrainedConfig()
    arguments = {
        "output_dir": str(tmp_path / library.__name__),
        "report_to": "none",
        "disable_tqdm": True,
        "use_cpu": True,
        "max_steps": 10,
        "logging_steps": 3,  # 10 is no multiple of 3: trackmux logs step 10 on its own
        "gradient_accumulation_steps": 2,
        "per_device_train_batch_size": 2,
        "save_strategy": "no",
        "learning_rate": 0.01,
        **extra,
    }
    trainer = library.Trainer(
        model=model,
        args=library.TrainingArguments(**arguments),
        train_dataset=RegressionDataset(16),
        callbacks=[recorder],
    )
    trainer.train()
    history = [numbers(entry) for entry in trainer.state.log_history]
    return recorder.events, history


@pytest.mark.parametrize("stop_at_begin", [False, True], ids=["last-step", "stop-at-begin"])
def test_transformers_flow_gives_transformers_event_sequence(tmp_path, stop_at_begin):
    expected_events, expected_history = flow(transformers, tmp_path, stop_at_begin)
    events, history = flow(trackmux, tmp_path, stop_at_begin, transformers_flow=True)
    assert events == expected_events
    assert [e["step"] for e in history] == [e["step"] for e in expected_history]
    for want, have in zip(expected_history[:-1], history[:-1]):  # the last: train summary
        assert_same_numbers(want, have, f"step {want['step']}")

    # trackmux's own flow: the two documented differences
    events, history = flow(trackmux, tmp_path, stop_at_begin)
    assert events != expected_events
    if stop_at_begin:  # no step at all
        assert not any(name == "on_step_begin" for name, _ in events)
    else:  # the last step is logged, though 10 is no multiple of logging_steps
        assert [e["step"] for e in history if "loss" in e] == [3, 6, 9, 10]
