"""The Hugging Face callback API on trackmux's Trainer: registration, the exact order of events,
what every event receives, and steering the loop through TrainerControl."""

from __future__ import annotations

import inspect

import pytest
import torch

from helpers_trainer import RaiseAt, Recorder, make_args, make_trainer
from trackmux import (
    DefaultFlowCallback,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    hookspecs,
)
from trackmux.testing.toy import RegressionDataset, TinyRegressor
from trackmux.trainer_callback import EVENTS

COMMON_KWARGS = {
    "model",
    "processing_class",
    "optimizer",
    "lr_scheduler",
    "train_dataloader",
    "eval_dataloader",
}


# ------------------------------------------------------------------ the documentation example


class MyCallback(TrainerCallback):
    "A callback that prints a message at the beginning of training"

    def on_train_begin(self, args, state, control, **kwargs):
        print("Starting training")


@pytest.fixture
def doc_setup(tmp_path):
    model = TinyRegressor()
    args = make_args(tmp_path, max_steps=2)
    return model, args, RegressionDataset(8), RegressionDataset(4, seed=1)


@pytest.mark.parametrize("given", [MyCallback, MyCallback()], ids=["class", "instance"])
def test_documentation_example(doc_setup, capsys, given):
    model, args, train_dataset, eval_dataset = doc_setup
    trainer = Trainer(
        model, args, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=[given]
    )
    trainer.train()
    assert capsys.readouterr().out.count("Starting training") == 1
    ours = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, MyCallback)]
    assert len(ours) == 1
    if not isinstance(given, type):
        assert ours[0] is given


def test_documentation_example_add_callback(doc_setup, capsys):
    model, args, train_dataset, eval_dataset = doc_setup
    trainer = Trainer(
        model, args, train_dataset=train_dataset, eval_dataset=eval_dataset, callbacks=[MyCallback]
    )
    trainer.add_callback(MyCallback)
    trainer.add_callback(MyCallback())
    trainer.train()
    assert capsys.readouterr().out.count("Starting training") == 3


def test_callback_order_flow_first_progress_last(tmp_path):
    first, second = MyCallback(), Recorder()
    trainer = make_trainer(tmp_path, trainer_kwargs={"callbacks": [first, second]})
    kinds = [type(cb) for cb in trainer.callback_handler.callbacks]
    assert kinds == [DefaultFlowCallback, MyCallback, Recorder, PrinterCallback]


def test_pop_and_remove_by_class_and_instance(tmp_path, capsys):
    trainer = make_trainer(tmp_path, max_steps=1)
    handler = trainer.callback_handler
    mine = MyCallback()
    trainer.add_callback(MyCallback)
    trainer.add_callback(mine)

    popped = trainer.pop_callback(MyCallback)  # by class: the first instance
    assert isinstance(popped, MyCallback) and popped is not mine
    assert trainer.pop_callback(mine) is mine
    assert trainer.pop_callback(mine) is None
    assert trainer.pop_callback(MyCallback) is None
    assert not any(isinstance(cb, MyCallback) for cb in handler.callbacks)

    trainer.add_callback(mine)
    trainer.remove_callback(mine)
    trainer.add_callback(MyCallback)
    trainer.remove_callback(MyCallback)
    assert not any(isinstance(cb, MyCallback) for cb in handler.callbacks)

    trainer.train()  # removed callbacks no longer listen
    assert "Starting training" not in capsys.readouterr().out


def test_remove_absent_instance_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, trainer_kwargs={"callbacks": [MyCallback]})
    with pytest.raises(ValueError, match=r"not among this Trainer's callbacks.*remove_callback"):
        trainer.remove_callback(MyCallback())  # another instance than the registered one
    trainer.remove_callback(MyCallback)  # the class form removes the registered one
    with pytest.raises(ValueError, match="MyCallback"):
        trainer.remove_callback(MyCallback)


def test_adding_something_else_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(TypeError, match="not a TrainerCallback"):
        trainer.add_callback(object())


def test_callback_added_after_init_hears_events(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)
    recorder = Recorder()
    trainer.add_callback(recorder)
    trainer.train()
    assert [call.event for call in recorder.of("on_step_end")] == ["on_step_end"] * 2


# ------------------------------------------------------------------------------ event order


def test_recorder_overrides_every_event():
    assert set(EVENTS) == {
        name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name[:3] == "on_"
    }
    for event in EVENTS:
        assert getattr(Recorder, event) is not getattr(TrainerCallback, event), event


def _step(n: int, *after: str) -> list[tuple[str, int]]:
    """The events of optimizer step ``n`` (global_step is n - 1 until the step ends), then
    ``after`` at global_step n."""
    return [
        ("on_step_begin", n - 1),
        ("on_pre_optimizer_step", n - 1),
        ("on_optimizer_step", n - 1),
        ("on_step_end", n),
        *[(event, n) for event in after],
    ]


EVALUATION = ("on_prediction_step", "on_prediction_step", "on_log", "on_evaluate")


def test_event_order_matches_hugging_face(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        train_size=12,  # 3 steps per epoch at batch size 4
        eval_size=8,  # 2 evaluation batches
        num_train_epochs=2,
        logging_steps=2,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
        trainer_kwargs={"callbacks": [recorder]},
    )
    trainer.train()
    expected = [
        ("on_init_end", 0),
        ("on_train_begin", 0),
        ("on_epoch_begin", 0),
        *_step(1),
        *_step(2, "on_log"),
        *_step(3, *EVALUATION, "on_save", "on_epoch_end"),
        ("on_epoch_begin", 3),
        *_step(4, "on_log"),
        *_step(5),
        *_step(6, "on_log", *EVALUATION, "on_save", "on_epoch_end"),
        ("on_log", 6),  # the train summary
        ("on_train_end", 6),
    ]
    assert recorder.events == expected
    logged = [sorted(entry) for entry in trainer.state.log_history]
    assert [entry["step"] for entry in trainer.state.log_history] == [2, 3, 4, 6, 6, 6]
    assert "loss" in logged[0] and "eval_loss" in logged[1] and "train_runtime" in logged[-1]


def test_the_last_step_is_always_logged_evaluated_and_saved(tmp_path):
    # trackmux's documented decision: the final step is logged even when it is no multiple of
    # logging_steps (Hugging Face evaluates and saves there too, but does not log)
    trainer = make_trainer(
        tmp_path,
        max_steps=5,
        logging_steps=2,
        logging_first_step=True,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    history = trainer.state.log_history
    assert [entry["step"] for entry in history if "loss" in entry] == [1, 2, 4, 5]
    assert [entry["step"] for entry in history if "eval_loss" in entry] == [2, 4, 5]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-2",
        "checkpoint-4",
        "checkpoint-5",
    ]


def test_event_order_with_gradient_accumulation(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        train_size=12,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=3,  # 6 micro-batches: 2 optimizer steps
        num_train_epochs=1,
        logging_strategy="no",
        trainer_kwargs={"callbacks": [recorder]},
    )
    trainer.train()
    one_step = [
        "on_step_begin",
        "on_substep_end",
        "on_substep_end",
        "on_pre_optimizer_step",
        "on_optimizer_step",
        "on_step_end",
    ]
    expected = [
        "on_init_end",
        "on_train_begin",
        "on_epoch_begin",
        *one_step,
        *one_step,
        "on_epoch_end",
        "on_log",
        "on_train_end",
    ]
    assert [event for event, _ in recorder.events] == expected
    assert [step for event, step in recorder.events if event == "on_substep_end"] == [0, 0, 1, 1]


def test_epoch_strategies_act_after_epoch_end(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        train_size=8,
        eval_size=4,  # one evaluation batch
        num_train_epochs=2,
        logging_strategy="epoch",
        eval_strategy="epoch",
        save_strategy="epoch",
        trainer_kwargs={"callbacks": [recorder]},
    )
    trainer.train()
    epoch_end = ["on_epoch_end", "on_log", "on_prediction_step", "on_log", "on_evaluate", "on_save"]
    expected = [
        ("on_init_end", 0),
        ("on_train_begin", 0),
        ("on_epoch_begin", 0),
        *_step(1),
        *_step(2, *epoch_end),
        ("on_epoch_begin", 2),
        *_step(3),
        *_step(4, *epoch_end),
        ("on_log", 4),
        ("on_train_end", 4),
    ]
    assert recorder.events == expected
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


# ------------------------------------------------------------------------ what events receive


class Tokenizer:
    """Stands in for a processing class: the Trainer only passes it around."""


def test_every_event_receives_the_objects_of_the_moment(tmp_path):
    recorder = Recorder()
    tokenizer = Tokenizer()
    trainer = make_trainer(
        tmp_path,
        train_size=8,
        max_steps=2,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        trainer_kwargs={"callbacks": [recorder], "processing_class": tokenizer},
    )
    trainer.train()
    trainer.predict(RegressionDataset(4, seed=2))

    extra = {"on_log": {"logs"}, "on_evaluate": {"metrics"}, "on_predict": {"metrics"}}
    seen = {call.event for call in recorder.calls}
    assert seen == set(EVENTS) - {"on_substep_end", "on_exception"}
    for call in recorder.calls:
        assert set(call.kwargs) == COMMON_KWARGS | extra.get(call.event, set()), call.event
        assert call.kwargs["model"] is trainer.model, call.event
        assert call.kwargs["processing_class"] is tokenizer, call.event

    init = recorder.of("on_init_end")[0].kwargs
    assert init["optimizer"] is None and init["lr_scheduler"] is None
    assert init["train_dataloader"] is None and init["eval_dataloader"] is None
    begin = recorder.of("on_train_begin")[0].kwargs
    assert isinstance(begin["optimizer"], torch.optim.Optimizer)
    assert begin["optimizer"] is trainer.optimizer
    assert begin["lr_scheduler"] is trainer.lr_scheduler
    assert isinstance(begin["train_dataloader"], torch.utils.data.DataLoader)
    assert begin["train_dataloader"] is trainer.train_dataloader

    for call in recorder.of("on_step_end") + recorder.of("on_optimizer_step"):
        assert call.kwargs["eval_dataloader"] is None
    prediction_steps = recorder.of("on_prediction_step")
    assert len(prediction_steps) == 2 + 1  # 8 eval samples in 2 batches, then 4 test samples
    loaders = [call.kwargs["eval_dataloader"] for call in prediction_steps]
    assert all(isinstance(loader, torch.utils.data.DataLoader) for loader in loaders)
    assert loaders[0] is loaders[1] and loaders[2] is not loaders[0]
    assert len(loaders[2].dataset) == 4

    logs = [call.kwargs["logs"] for call in recorder.of("on_log")]
    assert [{**entry, "step": 2} for entry in logs] == trainer.state.log_history
    (evaluation,) = recorder.of("on_evaluate")
    assert "eval_loss" in evaluation.kwargs["metrics"]
    (prediction,) = recorder.of("on_predict")
    assert "test_loss" in prediction.kwargs["metrics"]


def test_on_exception_receives_the_error_and_train_end_does_not_fire(tmp_path):
    recorder = Recorder()
    error = RuntimeError("boom at step 3")
    stopper = RaiseAt(3, error)
    trainer = make_trainer(tmp_path, max_steps=5, trainer_kwargs={"callbacks": [stopper, recorder]})
    with pytest.raises(RuntimeError, match="boom at step 3"):
        trainer.train()
    assert stopper.exceptions == [error]
    (call,) = recorder.of("on_exception")
    assert call.kwargs["exception"] is error
    assert set(call.kwargs) == COMMON_KWARGS | {"exception"}
    assert call.step == 2
    assert not recorder.of("on_train_end")


def test_failing_on_exception_hook_does_not_hide_the_error(tmp_path):
    class BrokenHandler(TrainerCallback):
        def on_exception(self, args, state, control, **kwargs):
            raise ValueError("the handler failed too")

    trainer = make_trainer(
        tmp_path,
        max_steps=3,
        trainer_kwargs={"callbacks": [RaiseAt(2, RuntimeError("original")), BrokenHandler]},
    )
    with pytest.raises(RuntimeError, match="original"):
        trainer.train()


def test_hugging_face_style_signatures_run_unchanged(tmp_path):
    seen = []

    class Explicit(TrainerCallback):
        def on_log(self, args, state, control, logs=None, model=None, **kwargs):
            seen.append((dict(logs), model, sorted(kwargs)))

        def on_evaluate(self, args, state, control, metrics, **kwargs):
            seen.append(("evaluate", metrics["eval_loss"]))

    trainer = make_trainer(tmp_path, max_steps=1, trainer_kwargs={"callbacks": [Explicit]})
    metrics = trainer.evaluate()
    assert seen[0][1] is trainer.model
    assert seen[0][2] == sorted(COMMON_KWARGS - {"model"})
    assert seen[1] == ("evaluate", metrics["eval_loss"])


# --------------------------------------------------------------------------------- control


def test_returned_control_replaces_the_trainers(tmp_path):
    class ReturnsStop(TrainerCallback):
        returned = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                ReturnsStop.returned = TrainerControl(should_training_stop=True)
                return ReturnsStop.returned
            return None

    trainer = make_trainer(tmp_path, max_steps=10, trainer_kwargs={"callbacks": [ReturnsStop]})
    output = trainer.train()
    assert output.global_step == trainer.state.global_step == 3
    assert trainer.control is ReturnsStop.returned


@pytest.mark.parametrize("stop_at", [1, 4])
def test_should_training_stop_stops_at_exactly_that_step(tmp_path, stop_at):
    recorder = Recorder()

    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == stop_at:
                control.should_training_stop = True

    trainer = make_trainer(
        tmp_path, max_steps=10, logging_steps=1, trainer_kwargs={"callbacks": [Stop, recorder]}
    )
    trainer.train()
    assert trainer.state.global_step == stop_at
    assert len(recorder.of("on_step_begin")) == stop_at
    assert [event for event, _ in recorder.events[-3:]] == [
        "on_epoch_end",
        "on_log",
        "on_train_end",
    ]


def test_should_save_forces_a_checkpoint(tmp_path):
    class SaveAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = state.global_step == 2

    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        max_steps=4,
        save_strategy="no",
        trainer_kwargs={"callbacks": [SaveAtTwo, recorder]},
    )
    trainer.train()
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-2"]
    assert [call.step for call in recorder.of("on_save")] == [2]


def test_should_evaluate_forces_an_evaluation(tmp_path):
    class EvaluateAtTwo(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                control.should_evaluate = True

    trainer = make_trainer(
        tmp_path, max_steps=4, eval_strategy="no", trainer_kwargs={"callbacks": [EvaluateAtTwo]}
    )
    trainer.train()
    evaluated = [entry["step"] for entry in trainer.state.log_history if "eval_loss" in entry]
    assert evaluated == [2]


def test_should_log_forces_a_log_of_the_steps_since_the_last(tmp_path):
    class LogAtThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_log = True

    every = make_trainer(tmp_path / "every", max_steps=4, logging_steps=1)
    every.train()
    losses = [entry["loss"] for entry in every.state.log_history if "loss" in entry]

    trainer = make_trainer(
        tmp_path / "forced",
        max_steps=4,
        logging_strategy="no",
        trainer_kwargs={"callbacks": [LogAtThree]},
    )
    trainer.train()
    (logged,) = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged["step"] == 3
    assert logged["loss"] == pytest.approx(sum(losses[:3]) / 3, rel=1e-6)


def test_should_epoch_stop_ends_only_the_epoch(tmp_path):
    class StopFirstEpoch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                control.should_epoch_stop = True

    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        train_size=12,
        num_train_epochs=2,
        trainer_kwargs={"callbacks": [StopFirstEpoch, recorder]},
    )
    trainer.train()
    assert trainer.state.global_step == 1 + 3
    assert [call.step for call in recorder.of("on_epoch_end")] == [1, 4]


def test_training_stop_set_at_train_begin_runs_no_step(tmp_path):
    class StopBeforeStart(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            control.should_training_stop = True

    recorder = Recorder()
    trainer = make_trainer(
        tmp_path, max_steps=5, trainer_kwargs={"callbacks": [StopBeforeStart, recorder]}
    )
    trainer.train()
    assert trainer.state.global_step == 0
    assert not recorder.of("on_step_begin")
    assert recorder.of("on_train_end")
