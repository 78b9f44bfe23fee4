"""Issue 14: trackers fed out of the training process, from the run journal, by the delivery
process (``python -m trackmux.companion``), with a tracker that writes what it receives to a
file from whichever process runs it.

No test depends on timing: where a test needs the delivery process to have done something,
it waits for that (the state file says so) under a generous deadline, and the hung backend
is a file the test removes."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections import Counter

import pytest
from delivery_helpers import (
    JournalRecorder,
    delivery_entry,
    journal_points,
    only_run,
    received,
    wait_until_closed,
)
from reliability_helpers import make_trainer, python_process, rest_of_output, wait_for_step

from trackmux import TrainerCallback
from trackmux.cli import main as cli
from trackmux.replay import Journal
from trackmux.runlog import read_run

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(autouse=True)
def _process_delivery(monkeypatch):
    """These tests are about the delivery process (the default), whatever the environment
    of the test run says."""
    monkeypatch.setenv("TRACKMUX_DELIVERY", "process")


def assert_every_point_once(run_dir, calls, *, status):
    """The backend got each metrics record of the journal once, in order, then one finish."""
    points = [(c["step"], c["metrics"]) for c in calls if c["type"] == "metrics"]
    assert points == journal_points(run_dir)
    assert [c["status"] for c in calls if c["type"] == "finish"][-1] == status
    assert calls[-1]["type"] == "finish"


def test_an_out_of_process_tracker_is_fed_from_the_journal_by_another_process(tmp_path):
    path = tmp_path / "received.jsonl"
    trainer = make_trainer(tmp_path / "out", [JournalRecorder(path=str(path))], max_steps=12)
    trainer.train()
    run_dir = only_run(tmp_path / "out")
    entry = wait_until_closed(run_dir)
    calls = received(path)
    assert_every_point_once(run_dir, calls, status="success")
    pids = {call["pid"] for call in calls}
    assert len(pids) == 1 and os.getpid() not in pids  # one delivery process, not this one
    [start] = [call for call in calls if call["type"] == "start"]
    assert start["torch"] is False  # the delivery process never imported torch
    # the state file: every record of the journal, the run's identity, its status
    assert entry["records"] == Journal(run_dir).count_all()
    assert entry["status"] == "success" and entry["finished"] is True
    assert trainer.state.tracker_runs["journal-recorder"] == entry["identity"]


@pytest.mark.parametrize("how", ["field", "environment"])
def test_thread_mode_keeps_every_tracker_in_the_training_process(tmp_path, monkeypatch, how):
    path = tmp_path / "received.jsonl"
    overrides = {}
    if how == "field":
        overrides["tracker_delivery"] = "thread"
    else:
        monkeypatch.setenv("TRACKMUX_DELIVERY", "thread")
    trainer = make_trainer(tmp_path / "out", [JournalRecorder(path=str(path))], **overrides)
    trainer.train()
    calls = received(path)
    assert {call["pid"] for call in calls} == {os.getpid()}
    assert_every_point_once(only_run(tmp_path / "out"), calls, status="success")
    assert delivery_entry(only_run(tmp_path / "out")) == {}


def test_the_field_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKMUX_DELIVERY", "thread")
    path = tmp_path / "received.jsonl"
    trainer = make_trainer(
        tmp_path / "out", [JournalRecorder(path=str(path))], tracker_delivery="process"
    )
    trainer.train()
    wait_until_closed(only_run(tmp_path / "out"))
    assert os.getpid() not in {call["pid"] for call in received(path)}


def test_a_bad_environment_value_names_the_variable_and_the_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKMUX_DELIVERY", "fork")
    trainer = make_trainer(tmp_path / "out", [JournalRecorder(path=str(tmp_path / "r"))])
    with pytest.raises(ValueError, match="TRACKMUX_DELIVERY='fork'.*process, thread"):
        trainer.train()


def test_without_the_journal_every_tracker_runs_in_the_training_process(tmp_path):
    path = tmp_path / "received.jsonl"
    # report_to=[] still keeps the journal (issue 17): run_journal=False is what turns it off
    trainer = make_trainer(
        tmp_path / "out", [JournalRecorder(path=str(path))], report_to=[], run_journal=False
    )
    trainer.train()
    assert not (tmp_path / "out" / "runs").exists()
    calls = received(path)
    assert {call["pid"] for call in calls} == {os.getpid()}
    assert [call["status"] for call in calls if call["type"] == "finish"] == ["success"]


def test_a_hung_backend_never_holds_the_loop_and_catches_up_later(tmp_path):
    path, hold = tmp_path / "received.jsonl", tmp_path / "hold"
    hold.write_text("the backend hangs while this file exists")
    trainer = make_trainer(
        tmp_path / "out",
        [JournalRecorder(path=str(path), hold=str(hold))],
        max_steps=30,
        tracker_queue_size=2,  # a thread tracker would block the loop on its full queue
        tracker_close_timeout=0.5,
    )
    trainer.train()
    run_dir = only_run(tmp_path / "out")
    # the whole training ran, and train() returned, while the tracker delivered no point
    assert trainer.state.global_step == 30
    assert [c for c in received(path) if c["type"] == "metrics"] == []
    assert delivery_entry(run_dir).get("finished") is None
    hold.unlink()  # the backend is back
    wait_until_closed(run_dir)
    assert_every_point_once(run_dir, received(path), status="success")


class KillDeliveryAt(TrainerCallback):
    """At step ``step``, once the delivery process delivered everything logged so far,
    kills it (SIGKILL) and waits until it is gone."""

    def __init__(self, step: int):
        self.step = step
        self.killed: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step != self.step:
            return
        hub = self.trainer._tracker_hub
        run_dir = hub.delivery.run_dir
        wait_until_delivered(run_dir, Journal(run_dir).count_all())
        self.killed = hub.delivery.pid
        os.kill(self.killed, signal.SIGKILL)
        hub.delivery.process.wait()


def wait_until_delivered(run_dir, records: int, timeout: float = 300.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while delivery_entry(run_dir).get("records", 0) < records:
        assert time.monotonic() < deadline, f"not delivered: {delivery_entry(run_dir)}"
        time.sleep(0.02)


def test_a_killed_delivery_process_is_replaced_and_nothing_is_lost_or_sent_twice(
    tmp_path, monkeypatch
):
    import trackmux.delivery_process

    monkeypatch.setattr(trackmux.delivery_process, "CHECK_EVERY", 0.0)  # look at every log
    path = tmp_path / "received.jsonl"
    killer = KillDeliveryAt(4)
    trainer = make_trainer(
        tmp_path / "out", [JournalRecorder(path=str(path))], callbacks=[killer], max_steps=10
    )
    killer.trainer = trainer
    trainer.train()
    run_dir = only_run(tmp_path / "out")
    wait_until_closed(run_dir)
    calls = received(path)
    assert_every_point_once(run_dir, calls, status="success")
    pids = [call["pid"] for call in calls]
    assert killer.killed in pids and len(set(pids)) == 2  # the first process, then one more
    starts = [call for call in calls if call["type"] == "start"]
    # the replacement reopened the same backend run at the step where the first stopped
    assert len(starts) == 2 and starts[1]["resume"] is not None
    assert starts[1]["resume"]["id"] == delivery_entry(run_dir)["identity"]["id"]


#: a training in a child process, fed to JournalRecorder out of process, until it is killed
TRAINING = f"""
import json, sys
sys.path.insert(0, {HERE!r})
from delivery_helpers import JournalRecorder
from reliability_helpers import make_trainer
from trackmux import TrainerCallback

output_dir, options = sys.argv[1], json.loads(sys.argv[2])
recorder = JournalRecorder(path=options.pop("path"), hold=options.pop("hold", None))


class Progress(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        print("step", state.global_step, flush=True)


make_trainer(output_dir, [recorder], callbacks=[Progress()], **options).train()
"""


def start_training(output_dir, **options):
    options.setdefault("max_steps", 10_000_000)
    return python_process(TRAINING, str(output_dir), json.dumps(options), cwd=str(output_dir))


def test_kill_9_of_the_training_process_delivers_everything_and_closes_the_run_killed(
    tmp_path,
):
    path = tmp_path / "received.jsonl"
    process = start_training(tmp_path, path=str(path))
    wait_for_step(process, 25)
    process.kill()
    rest_of_output(process, timeout=60)
    run_dir = only_run(tmp_path)
    assert not read_run(run_dir).finished
    entry = wait_until_closed(run_dir)
    assert entry["status"] == "killed" and entry["finished"] is False
    calls = received(path)
    assert_every_point_once(run_dir, calls, status="killed")
    assert len(journal_points(run_dir)) >= 25


def test_sigterm_writes_the_checkpoint_and_returns_while_the_backend_hangs(tmp_path):
    path, hold = tmp_path / "received.jsonl", tmp_path / "hold"
    hold.write_text("the backend hangs while this file exists")
    process = start_training(
        tmp_path, path=str(path), hold=str(hold), save_on_interrupt=True, max_steps=10_000
    )
    wait_for_step(process, 5)
    process.terminate()
    _, stderr = rest_of_output(process, timeout=120)
    assert process.returncode == -signal.SIGTERM, stderr
    run_dir = only_run(tmp_path)
    log = read_run(run_dir)
    assert log.status == "killed"
    checkpoints = [name for name in os.listdir(tmp_path) if name.startswith("checkpoint-")]
    assert len(checkpoints) == 1
    # the training process was gone while the tracker still hung: the backend got nothing
    assert [call for call in received(path) if call["type"] == "metrics"] == []
    hold.unlink()
    entry = wait_until_closed(run_dir)
    assert entry["status"] == "killed"
    assert_every_point_once(run_dir, received(path), status="killed")


def test_a_resumed_training_continues_the_same_backend_run(tmp_path):
    path = tmp_path / "received.jsonl"
    first = make_trainer(
        tmp_path / "out",
        [JournalRecorder(path=str(path))],
        max_steps=4,
        save_strategy="steps",
        save_steps=4,
    )
    first.train()
    run_dir = only_run(tmp_path / "out")
    identity = wait_until_closed(run_dir)["identity"]
    second = make_trainer(
        tmp_path / "out",
        [JournalRecorder(path=str(path))],
        max_steps=8,
        save_strategy="steps",
        save_steps=4,
    )
    second.train(resume_from_checkpoint=True)
    assert only_run(tmp_path / "out") == run_dir  # one journal, two sessions
    entry = wait_until_closed(run_dir)
    assert entry["identity"] == identity
    calls = received(path)
    starts = [call for call in calls if call["type"] == "start"]
    assert [s["resume"] for s in starts] == [None, identity]
    assert Counter(call["step"] for call in calls if call["type"] == "metrics") == Counter(
        step for step, _ in journal_points(run_dir)
    )


def test_a_tracker_that_cannot_start_is_given_up_and_show_says_so(tmp_path, capsys):
    trainer = make_trainer(
        tmp_path / "out",
        [JournalRecorder(path=str(tmp_path / "no" / "such" / "dir" / "file"))],
        tracker_close_timeout=300,
    )
    trainer.train()  # the delivery process gives up: train() does not wait out the timeout
    run_dir = only_run(tmp_path / "out")
    entry = delivery_entry(run_dir)
    assert entry["gave_up"] is True and "FileNotFoundError" in entry["error"]
    capsys.readouterr()
    assert cli(["show", run_dir]) == 0
    out = capsys.readouterr().out
    assert "journal-recorder 0/" in out and "given up: " in out


def test_trackmux_show_reports_where_delivery_stands(tmp_path, capsys):
    path = tmp_path / "received.jsonl"
    make_trainer(tmp_path / "out", [JournalRecorder(path=str(path))]).train()
    run_dir = only_run(tmp_path / "out")
    wait_until_closed(run_dir)
    capsys.readouterr()
    assert cli(["show", run_dir]) == 0
    total = Journal(run_dir).count_all()
    assert f"journal-recorder {total}/{total} records, closed success" in capsys.readouterr().out


def test_the_companion_module_imports_no_torch():
    from trackmux.testing import run_child

    code = "import sys, trackmux.companion, trackmux.replay; print('torch' in sys.modules)"
    result = run_child([sys.executable, "-c", code])
    assert result.stdout.strip() == "False", result.stderr


def test_evaluate_after_train_is_the_same_delivery_process_and_backend_run(tmp_path):
    from trackmux.testing.toy import RegressionDataset

    path = tmp_path / "received.jsonl"
    trainer = make_trainer(tmp_path / "out", [JournalRecorder(path=str(path))])
    trainer.train()
    trainer.evaluate(RegressionDataset(8, seed=1))
    run_dir = only_run(tmp_path / "out")
    entry = wait_until_closed(run_dir)
    starts = [call for call in received(path) if call["type"] == "start"]
    # the process that holds the backend run open delivers the next session of its journal
    # (a backend like Neptune offline cannot reopen a run from another process)
    assert [s["session"] for s in starts] == ["train", "evaluate"]
    assert starts[0]["pid"] == starts[1]["pid"]
    assert starts[1]["resume"] == entry["identity"]
    assert [c["status"] for c in received(path) if c["type"] == "finish"] == ["success"] * 2


def test_a_trackers_notice_is_shown_by_the_training_process(tmp_path, caplog):
    import logging

    notice = "journal-recorder: no credentials, logging offline; upload later with: x sync"
    tracker = JournalRecorder(path=str(tmp_path / "received.jsonl"), notice=notice)
    trainer = make_trainer(tmp_path / "out", [tracker], tracker_close_timeout=600)
    with caplog.at_level(logging.INFO, logger="trackmux.journal-recorder"):
        trainer.train()
    said = [r for r in caplog.records if r.name == "trackmux.journal-recorder"]
    assert [r.getMessage() for r in said] == [notice]  # as if the tracker ran here
    [start] = [c for c in received(tmp_path / "received.jsonl") if c["type"] == "start"]
    assert start["pid"] != os.getpid()  # it did not


def test_a_checkpoint_warns_about_no_tracker_the_delivery_process_starts(tmp_path, caplog):
    import logging

    from trackmux.trainer_state import TRACKMUX_STATE_FILE_NAME

    trainer = make_trainer(
        tmp_path / "out",
        [JournalRecorder(path=str(tmp_path / "received.jsonl"))],
        save_strategy="steps",
        save_steps=2,
        tracker_close_timeout=600,
    )
    with caplog.at_level(logging.WARNING):
        trainer.train()
    assert not [r for r in caplog.records if "had not started" in r.getMessage()]
    identity = wait_until_closed(only_run(tmp_path / "out"))["identity"]
    for step in (2, 4, 6):
        state_file = tmp_path / "out" / f"checkpoint-{step}" / TRACKMUX_STATE_FILE_NAME
        state = json.loads(state_file.read_text())
        assert state["tracker_runs_pending"] == []
        # known by the end of the session, the identity was added to every checkpoint
        assert state["tracker_runs"]["journal-recorder"] == identity


def test_the_same_relative_run_in_another_working_directory_gets_its_own_delivery(
    tmp_path, monkeypatch
):
    # the same relative output_dir and tracker settings, two working directories (pytest's
    # tmp_path, a notebook's chdir): two journals, so two delivery processes
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        tracker = JournalRecorder(path="received.jsonl")  # relative: in the working directory
        make_trainer("out", [tracker], tracker_close_timeout=120).train()
        entry = wait_until_closed(only_run(tmp_path / name / "out"))
        assert entry["status"] == "success"
        calls = received(tmp_path / name / "received.jsonl")
        assert [c["type"] for c in calls][0] == "start" and calls[-1]["type"] == "finish"
