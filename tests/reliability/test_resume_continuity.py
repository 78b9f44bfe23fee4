"""Issue 8, scenario 6 (core part; tests/integration/test_reliability_backends.py checks
MLflow and TensorBoard): train, interrupt, resume from the checkpoint. Every tracker
continues the same run, no step is logged twice, steps keep increasing, params are not
duplicated. With ``save_on_interrupt`` the checkpoint is the step of the interrupt itself."""

from __future__ import annotations

import os
import signal

import pytest
from reliability_helpers import Recorder, make_trainer, report

from trackmux import TrainerCallback
from trackmux.runlog import read_run

STOP_AT = 5


class SigintAt(TrainerCallback):
    """Sends this process a real SIGINT in the middle of step ``step`` (after the parameter
    update, before the step is logged: the signal must wait for the step to complete)."""

    def __init__(self, step: int):
        self.step = step

    def on_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_resume_after_an_interrupt_continues_the_same_runs(tmp_path, record_property):
    first = Recorder()
    trainer = make_trainer(
        tmp_path, [first], callbacks=[SigintAt(STOP_AT)], save_on_interrupt=True, max_steps=8
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert first.calls[-1] == ("finish", "killed")
    # the signal waited for step 5 to be logged, and the checkpoint is that step
    assert [call[1] for call in first.of("metrics")] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{STOP_AT}"]

    second = Recorder()
    resumed = make_trainer(tmp_path, [second], save_on_interrupt=True, max_steps=8)
    resumed.train(resume_from_checkpoint=True)

    assert second.runs[0].resume == {"id": "recorder-run-1"}
    assert second.runs[0].name == first.runs[0].name
    assert second.runs[0].step == STOP_AT
    steps = [call[1] for call in first.of("metrics") + second.of("metrics")]
    assert steps == list(range(1, 9))  # each step once, in order
    assert second.runs[0].config == first.runs[0].config  # the same params, once more

    run = read_run(tmp_path / "runs" / "reliability")
    logged = [r["step"] for r in run.records if r["type"] == "metrics"]
    report(record_property, 8, jsonl=len(logged), recorder=len(steps))
    assert logged == list(range(1, 9))  # the raw log too, not only read_run's view
    assert [step for step, _ in run.history("train/loss")] == list(range(1, 9))
    assert run.sessions == 2 and run.statuses == ["killed", "success"]
    starts = [r for r in run.records if r["type"] == "start"]
    assert starts[1]["resumed"] and starts[1]["config"] == starts[0]["config"]


def test_without_save_on_interrupt_the_steps_after_the_checkpoint_are_replaced(tmp_path):
    """The documented limit: resuming from an older checkpoint logs its later steps again;
    the jsonl reader keeps the resumed run's points (each step once); a backend that cannot
    delete points shows both (the tracker gets RunInfo.step to purge them)."""
    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(
            tmp_path,
            [first],
            callbacks=[SigintAt(STOP_AT)],
            max_steps=8,
            save_strategy="steps",
            save_steps=2,
        ).train()
    second = Recorder()
    make_trainer(tmp_path, [second], max_steps=8, save_strategy="steps", save_steps=2).train(
        resume_from_checkpoint=True
    )
    assert second.runs[0].step == 4
    assert [call[1] for call in second.of("metrics")] == [5, 6, 7, 8]
    run = read_run(tmp_path / "runs" / "reliability")
    assert [step for step, _ in run.history("train/loss")] == list(range(1, 9))
