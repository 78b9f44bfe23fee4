"""Issue 13, point 3: a checkpoint (regular or on interrupt) holds the run identity of every
tracker that has started or is starting. A save waits, within
``TrainingArguments.tracker_close_timeout``, for a ``start`` that has not returned; a tracker
still starting then is named in a warning and in ``tracker_runs_pending``, its identity is
added to the checkpoint once it starts in the same session, and a resume opens a new run for
it only when it never did.

No test depends on timing to pass: a start is held on a gate the test opens (then takes
seconds), and the only waits are generous deadlines for something that will happen."""

from __future__ import annotations

import json
import threading
import time

import pytest
from reliability_helpers import Recorder, make_trainer

from trackmux import TrainerCallback
from trackmux.runlog import find_runs, read_run
from trackmux.trainer_state import STATE_FILE_NAME, TRACKMUX_STATE_FILE_NAME, TrainerState

GENEROUS = 60.0  # seconds: a deadline for something that will happen
SHORT = 0.5  # seconds: a deadline a start held on a closed gate misses


class SlowStart(Recorder):
    """A tracker whose ``start`` waits until ``gate`` is open, then takes ``delay`` s more."""

    name = "slow"

    def __init__(self, gate: threading.Event | None = None, delay: float = 0.0):
        super().__init__()
        self.gate = gate
        self.delay = delay
        self.returned = threading.Event()

    def start(self, run):
        if self.gate is not None:
            self.gate.wait()
        time.sleep(self.delay)
        try:
            return super().start(run)
        finally:
            self.returned.set()


@pytest.fixture
def gate():
    """What a slow start waits on; opened at the end so its thread can finish."""
    event = threading.Event()
    yield event
    event.set()


def saved_state(directory) -> dict:
    """A checkpoint's state: trackmux's keys are in a file of their own, so
    trainer_state.json stays exactly transformers' schema (issue 16)."""
    state = json.loads((directory / STATE_FILE_NAME).read_text())
    return {**state, **json.loads((directory / TRACKMUX_STATE_FILE_NAME).read_text())}


class OpenAt(TrainerCallback):
    """Opens the gate at the end of step ``step``, just before that step's save."""

    def __init__(self, gate: threading.Event, step: int):
        self.gate, self.step = gate, step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.gate.set()


def test_a_checkpoint_holds_the_identity_of_a_tracker_that_starts_slowly(tmp_path, caplog, gate):
    # the start cannot return before step 1 ends, and takes 2 s from there: the save of
    # step 1 waits for it
    slow = SlowStart(gate, delay=2.0)
    trainer = make_trainer(
        tmp_path,
        [slow],
        callbacks=[OpenAt(gate, 1)],
        max_steps=3,
        save_strategy="steps",
        save_steps=1,
        tracker_close_timeout=GENEROUS,
    )
    trainer.train()
    for step in (1, 2, 3):
        state = saved_state(tmp_path / f"checkpoint-{step}")
        assert state["tracker_runs"]["slow"] == {"id": "slow-run-1"}, step
        assert state["tracker_runs_pending"] == [], step
    # as saved, not rewritten afterwards
    assert not [r for r in caplog.records if "had not started" in r.getMessage()]


class AtSave(TrainerCallback):
    """After checkpoint-1 is written: read it, then open the gate and wait for the start."""

    def __init__(self, tracker: SlowStart, directory):
        self.tracker, self.directory, self.seen = tracker, directory, None

    def on_save(self, args, state, control, **kwargs):
        if self.seen is None:
            self.seen = saved_state(self.directory)
            self.tracker.gate.set()
            assert self.tracker.returned.wait(GENEROUS)


def test_a_start_that_had_not_returned_is_named_and_added_to_the_checkpoint_later(
    tmp_path, caplog, gate
):
    slow = SlowStart(gate)
    at_save = AtSave(slow, tmp_path / "checkpoint-1")
    trainer = make_trainer(
        tmp_path,
        [slow],
        callbacks=[at_save],
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        tracker_close_timeout=SHORT,
    )
    trainer.train()

    # as saved: the tracker named, no identity for it
    assert at_save.seen["tracker_runs_pending"] == ["slow"]
    assert "slow" not in at_save.seen["tracker_runs"]
    assert "jsonl" in at_save.seen["tracker_runs"]  # the others' identities are there
    (warning,) = [r.getMessage() for r in caplog.records if "had not started" in r.getMessage()]
    assert "'slow'" in warning and "checkpoint-1" in warning
    assert "TrainingArguments.tracker_close_timeout" in warning
    assert "resuming it would open a new 'slow' run" in warning
    # it started before the run closed: the checkpoint was rewritten with its identity
    state = saved_state(tmp_path / "checkpoint-1")
    assert state["tracker_runs"]["slow"] == {"id": "slow-run-1"}
    assert state["tracker_runs_pending"] == []
    assert state["global_step"] == 1 and state["log_history"] == at_save.seen["log_history"]
    assert [p.name for p in (tmp_path / "checkpoint-1").iterdir() if p.name.endswith(".tmp")] == []

    # and resuming it continues that run
    again = Recorder()
    again.name = "slow"
    make_trainer(tmp_path, [again], max_steps=2).train(resume_from_checkpoint=True)
    assert again.runs[0].resume == {"id": "slow-run-1"}


def test_resuming_a_checkpoint_saved_before_a_start_returned_opens_a_new_run(
    tmp_path, caplog, gate
):
    # the start never returns in this session: the checkpoint keeps the name
    slow = SlowStart(gate)
    make_trainer(
        tmp_path,
        [slow],
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        tracker_close_timeout=SHORT,
    ).train()
    state = saved_state(tmp_path / "checkpoint-1")
    assert state["tracker_runs_pending"] == ["slow"] and "slow" not in state["tracker_runs"]

    caplog.clear()
    again = Recorder()
    again.name = "slow"
    resumed = make_trainer(tmp_path, [again], max_steps=2, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=True)
    assert again.runs[0].resume is None  # a new run
    (said,) = [r.getMessage() for r in caplog.records if "opening a new run" in r.getMessage()]
    assert "'slow'" in said and "start had not returned" in said
    state = saved_state(tmp_path / "checkpoint-2")
    assert state["tracker_runs"]["slow"] == {"id": "slow-run-1"}
    assert state["tracker_runs_pending"] == []


class InterruptAt(TrainerCallback):
    """Raises KeyboardInterrupt at the beginning of step ``step``: the start is still held."""

    def __init__(self, gate: threading.Event, step: int):
        self.gate, self.step = gate, step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            raise KeyboardInterrupt


def test_an_interrupt_checkpoint_waits_on_no_tracker(tmp_path, caplog, gate):
    """Issue 14, point 6: the interrupt checkpoint comes first; a tracker still starting is
    not waited for (it is named in ``tracker_runs_pending``) and train() hands control back
    while that start is still held."""
    slow = SlowStart(gate)
    trainer = make_trainer(
        tmp_path,
        [slow],
        callbacks=[InterruptAt(gate, 3)],
        save_on_interrupt=True,
        tracker_close_timeout=GENEROUS,
        tracker_delivery="thread",
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert not gate.is_set() and not slow.returned.is_set()  # train() returned meanwhile
    state = saved_state(tmp_path / "checkpoint-2")
    assert state["tracker_runs_pending"] == ["slow"]
    assert "slow" not in state["tracker_runs"]
    [finish] = [r for r in read_run(find_runs(tmp_path)[-1]).records if r["type"] == "finish"]
    assert finish["status"] == "killed"


def test_a_state_file_without_tracker_runs_pending_still_loads(tmp_path):
    path = tmp_path / STATE_FILE_NAME
    TrainerState(global_step=3, tracker_runs={"mlflow": {"run_id": "abc"}}).save_to_json(path)
    data = json.loads(path.read_text())
    del data["tracker_runs_pending"]  # as written before the field existed
    path.write_text(json.dumps(data))
    loaded = TrainerState.load_from_json(path)
    assert loaded.tracker_runs_pending == []
    assert loaded.tracker_runs == {"mlflow": {"run_id": "abc"}}
