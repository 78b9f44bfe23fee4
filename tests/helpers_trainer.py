"""Shared pieces of the core Trainer tests: quiet arguments, the toy task, a callback that
records every event, and callbacks that interrupt a run."""

from __future__ import annotations

from dataclasses import dataclass, field

from trackmux import Trainer, TrainerCallback, TrainingArguments, set_seed
from trackmux.testing.toy import RegressionDataset, TinyRegressor
from trackmux.trainer_callback import EVENTS

QUIET = {
    "report_to": "none",
    "disable_tqdm": True,
    "save_strategy": "no",
    "per_device_train_batch_size": 4,
    "per_device_eval_batch_size": 4,
    "learning_rate": 0.01,
    "seed": 7,
}


def make_args(output_dir, **overrides) -> TrainingArguments:
    return TrainingArguments(**{**QUIET, "output_dir": str(output_dir), **overrides})


def make_trainer(
    output_dir,
    *,
    model=None,
    train_size: int = 16,
    eval_size: int = 8,
    trainer_class=Trainer,
    trainer_kwargs=None,
    **overrides,
):
    """A Trainer on the toy task; ``overrides`` are TrainingArguments fields."""
    if model is None:
        set_seed(0)  # the weights must not depend on what earlier tests drew
        model = TinyRegressor()
    return trainer_class(
        model,
        make_args(output_dir, **overrides),
        train_dataset=RegressionDataset(train_size),
        eval_dataset=RegressionDataset(eval_size, seed=1) if eval_size else None,
        **(trainer_kwargs or {}),
    )


@dataclass
class Call:
    event: str
    step: int
    kwargs: dict = field(repr=False)


class Recorder(TrainerCallback):
    """Records every event with ``state.global_step`` and the keyword objects it received.
    Every ``on_*`` method of TrainerCallback is overridden (generated below)."""

    def __init__(self):
        self.calls: list[Call] = []

    @property
    def events(self) -> list[tuple[str, int]]:
        return [(call.event, call.step) for call in self.calls]

    def of(self, event: str) -> list[Call]:
        return [call for call in self.calls if call.event == event]


def _recording(event: str):
    def method(self, args, state, control, **kwargs):
        self.calls.append(Call(event, state.global_step, kwargs))

    method.__name__ = method.__qualname__ = event
    return method


for _event in EVENTS:
    setattr(Recorder, _event, _recording(_event))


class RaiseAt(TrainerCallback):
    """Raises ``error`` at the beginning of step ``step`` (steps count from 1), and records
    what ``on_exception`` received."""

    def __init__(self, step: int, error: BaseException):
        self.step = step
        self.error = error
        self.exceptions: list[BaseException] = []

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise self.error

    def on_exception(self, args, state, control, exception=None, **kwargs):
        self.exceptions.append(exception)


def losses_by_step(state) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in state.log_history if "loss" in entry}


def scripted_metric(scores: dict[int, float], name: str = "score"):
    """A compute_metrics returning ``{name: scores[global_step]}``, so a test decides when
    the metric improves. Append the Trainer to the returned ``box`` once built."""
    box: list[Trainer] = []

    def compute_metrics(prediction):
        return {name: scores[box[0].state.global_step]}

    return compute_metrics, box
