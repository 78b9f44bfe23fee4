"""Issue 8, scenario 5: the model raises at step N. Every tracker is finished as failed,
nothing logged before is lost, and the original exception propagates unchanged: the same
object, its type and its traceback down to the model's forward, even when a tracker also
fails while closing."""

from __future__ import annotations

import traceback

import pytest
from reliability_helpers import Recorder, jsonl_records, make_trainer, report, sent

from trackmux import Trainer
from trackmux.runlog import find_runs, read_run
from trackmux.testing.toy import TinyRegressor

FAIL_AT = 4


class ExplodingRegressor(TinyRegressor):
    def __init__(self, error: BaseException, at_call: int):
        super().__init__()
        self.error, self.at_call, self.calls = error, at_call, 0

    def forward(self, x, labels=None):
        self.calls += 1
        if self.calls == self.at_call:
            raise self.error
        return super().forward(x, labels)


class ExplodingTrainer(Trainer):
    error = None

    def __init__(self, model, *arguments, **options):
        super().__init__(ExplodingRegressor(self.error, FAIL_AT), *arguments, **options)


def train_until_it_fails(tmp_path, trackers, **overrides):
    error = ValueError("bad batch at step 4")
    ExplodingTrainer.error = error
    trainer = make_trainer(tmp_path, trackers, trainer_class=ExplodingTrainer, **overrides)
    with pytest.raises(ValueError) as raised:
        trainer.train()
    return trainer, error, raised


def test_an_error_in_the_model_fails_every_tracker_and_propagates_unchanged(
    tmp_path, record_property
):
    recorder = Recorder()
    trainer, error, raised = train_until_it_fails(tmp_path, [recorder])

    assert raised.value is error and type(raised.value) is ValueError
    frames = [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]
    assert "train" in frames and frames[-1] == "forward"  # raised where it happened
    assert trainer.state.global_step == FAIL_AT - 1
    count = sent(trainer)
    logged = jsonl_records(tmp_path)
    report(record_property, count, jsonl=len(logged), recorder=recorder.received)
    assert count == FAIL_AT - 1 == len(logged) == recorder.received
    assert recorder.calls[-1] == ("finish", "failed")
    assert read_run(find_runs(tmp_path)[-1]).status == "failed"


def test_a_tracker_failing_at_close_does_not_replace_the_training_error(tmp_path, caplog):
    closing = Recorder(fails_in=("finish",))
    # strict: the tracker's error would be raised, were training not failing already
    _, error, raised = train_until_it_fails(tmp_path, [closing], tracker_strict=True)
    assert raised.value is error
    assert any("also failed while closing" in r.getMessage() for r in caplog.records)
    assert read_run(find_runs(tmp_path)[-1]).status == "failed"
