"""Issue 8, scenario 3 (core part; tests/integration/test_reliability_backends.py repeats it
against real backends): SIGINT and SIGTERM during training, in a subprocess. Every tracker
is finished as killed, the jsonl log ends with a finish record, the checkpoint asked for with
``save_on_interrupt`` is written, and the process ends the conventional way: SIGINT as an
uncaught KeyboardInterrupt (Python ends by SIGINT: -2, 130 in a shell), SIGTERM by SIGTERM
(-15, 143 in a shell) once the trackers are closed."""

from __future__ import annotations

import json
import os
import signal

import pytest
from reliability_helpers import (
    Recorder,
    file_records,
    make_trainer,
    report,
    start_endless_training,
    wait_for_step,
)

from trackmux.runlog import read_run
from trackmux.testing.processes import describe_child, rest_of_output
from trackmux.trainer import Terminated


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_closes_every_tracker_as_killed(tmp_path, record_property, signum):
    process = start_endless_training(tmp_path, save_on_interrupt=True)
    try:
        wait_for_step(process, 20)
        process.send_signal(signum)
        stdout, stderr = rest_of_output(process, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    child = describe_child(process, stdout, stderr)
    assert process.returncode == -signum, child  # died by the signal it was sent
    said_sent = [line for line in stdout.splitlines() if line.startswith("sent ")]
    assert said_sent, child
    sent = int(said_sent[0].split()[1])
    run = read_run(tmp_path / "runs" / "endless")
    recorded = file_records(tmp_path / "recorder.jsonl")
    received = [r for r in recorded if r["type"] == "metrics"]
    report(record_property, sent, jsonl=len(run.history("train/loss")), recorder=len(received))

    assert run.status == "killed" and run.records[-1]["type"] == "finish", child
    assert recorded[-1] == {"type": "finish", "status": "killed"}, child
    steps = list(range(1, sent + 1))
    assert [step for step, _ in run.history("train/loss")] == steps, child
    assert [r["step"] for r in received] == steps, child
    assert f"training interrupted at step {sent}" in stderr, child

    # the interrupt checkpoint holds every step that was logged, and the tracker identities
    checkpoint = tmp_path / f"checkpoint-{sent}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == sent
    identities = json.loads((checkpoint / "trackmux_state.json").read_text())["tracker_runs"]
    assert identities["recorder"] == {"id": "recorder-run"}
    assert (checkpoint / "model.safetensors").is_file()


def test_without_save_on_interrupt_no_checkpoint_is_written(tmp_path):
    process = start_endless_training(tmp_path)
    try:
        wait_for_step(process, 5)
        process.send_signal(signal.SIGINT)
        stdout, stderr = rest_of_output(process, timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    child = describe_child(process, stdout, stderr)
    assert process.returncode == -signal.SIGINT, child
    assert "KeyboardInterrupt" in stderr, child  # the usual traceback of an uncaught Ctrl-C
    assert not list(tmp_path.glob("checkpoint-*")), child
    assert read_run(tmp_path / "runs" / "endless").status == "killed", child


class SignalsDuringFlush(Recorder):
    """A tracker flushed on the loop thread at each save: it sends this process a signal
    there, in the middle of writing the checkpoint."""

    name = "signaller"
    synchronous = True

    def __init__(self, signum):
        super().__init__()
        self.signum = signum

    def flush(self):
        os.kill(os.getpid(), self.signum)


def test_a_signal_while_a_checkpoint_is_written_waits_until_it_is_complete(tmp_path):
    tracker = SignalsDuringFlush(signal.SIGINT)
    trainer = make_trainer(tmp_path, [tracker], save_strategy="steps", save_steps=2)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    # the signal came while checkpoint-2 was being written: it was finished first
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert tracker.calls[-1] == ("finish", "killed")


def test_sigterm_goes_to_the_handler_installed_before_training(tmp_path):
    received = []

    def mine(signum, frame):
        received.append(signum)

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        tracker = SignalsDuringFlush(signal.SIGTERM)
        trainer = make_trainer(tmp_path, [tracker], save_strategy="steps", save_steps=2)
        with pytest.raises(Terminated, match="received signal SIGTERM") as raised:
            trainer.train()
        assert isinstance(raised.value, KeyboardInterrupt)  # Ctrl-C handling covers it
        assert received == [signal.SIGTERM]  # once the trackers were closed
        assert tracker.calls[-1] == ("finish", "killed")
        assert signal.getsignal(signal.SIGTERM) is mine  # the user's is back
    finally:
        signal.signal(signal.SIGTERM, previous)
