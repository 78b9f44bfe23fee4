"""Issue 8, scenario 2: a tracker that blocks forever in log_metrics or in finish. Training
does not wait for it (its queue has room), the run ends within
``TrainingArguments.tracker_close_timeout``, and the warning names the tracker and how many
records it held."""

from __future__ import annotations

import re
import threading
import time

import pytest
from reliability_helpers import Recorder, jsonl_records, make_trainer, report, sent

from trackmux import TrainerCallback
from trackmux.runlog import find_runs, read_run

CLOSE_TIMEOUT = 0.5


@pytest.fixture
def gate():
    """What the hung tracker waits on; opened at the end so its thread can finish."""
    event = threading.Event()
    yield event
    event.set()


def hung_tracker(gate, method: str) -> Recorder:
    class Hung(Recorder):
        name = "hung"

    def blocked(*arguments):
        gate.wait()

    tracker = Hung()
    setattr(tracker, method, blocked)
    return tracker


class TrainingEnd(TrainerCallback):
    """When the training loop ended: what comes after is closing the trackers."""

    at = None

    def on_train_end(self, args, state, control, **kwargs):
        self.at = time.monotonic()


def abandoned_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "abandoning" in r.getMessage()]


@pytest.mark.parametrize("method, held", [("log_metrics", 7), ("finish", 0)])
def test_a_hung_tracker_is_abandoned_at_the_close_timeout(
    tmp_path, caplog, gate, record_property, method, held
):
    hung, healthy, end = hung_tracker(gate, method), Recorder(), TrainingEnd()
    trainer = make_trainer(
        tmp_path, [hung, healthy], callbacks=[end], tracker_close_timeout=CLOSE_TIMEOUT
    )
    trainer.train()
    closing = time.monotonic() - end.at

    count = sent(trainer)
    logged = jsonl_records(tmp_path)
    report(
        record_property,
        count,
        jsonl=len(logged),
        recorder=healthy.received,
        hung=len(hung.of("metrics")) + len(hung.of("summary")),
    )
    assert len(logged) == healthy.received == count == 7
    # the loop never waited for the hung tracker (its queue had room, nothing was flushed)...
    figures = read_run(find_runs(tmp_path)[-1]).delivery["hung"]
    assert figures["stalls"] == 0 and figures["waited_s"] == 0, figures
    assert not any("did not flush within" in r.getMessage() for r in caplog.records)
    # ...and closing waited the timeout for it, once, then gave up on it (below)
    assert closing >= CLOSE_TIMEOUT, closing
    assert healthy.calls[-1] == ("finish", "success")
    (warning,) = [message for message in abandoned_warnings(caplog) if "'hung'" in message]
    # one record is stuck in its hands, the other six wait in its queue
    assert re.search(rf"\b{held} records\b", warning), warning
    assert "tracker_close_timeout" in warning  # the setting that controls it


def test_a_healthy_tracker_is_not_abandoned_because_another_hung(tmp_path, caplog, gate):
    hung, healthy = hung_tracker(gate, "log_metrics"), Recorder()
    make_trainer(tmp_path, [hung, healthy], tracker_close_timeout=CLOSE_TIMEOUT).train()
    assert healthy.calls[-1] == ("finish", "success")
    named = [m for m in abandoned_warnings(caplog) if "'recorder'" in m]
    assert not named, named


def test_a_hung_tracker_costs_the_saves_one_close_timeout_in_all(tmp_path, caplog, gate):
    """A checkpoint flushes every tracker, waiting up to tracker_close_timeout; after one
    flush timed out, later saves do not wait again for a tracker that has not moved."""
    hung = hung_tracker(gate, "log_metrics")
    trainer = make_trainer(
        tmp_path, [hung], save_strategy="steps", save_steps=2, tracker_close_timeout=0.3
    )
    output = trainer.train()  # three saves
    # the first save waited the timeout; the later ones did not wait again (each wait that
    # runs out says so)
    assert output.metrics["train_runtime"] >= 0.3, output.metrics
    assert len(jsonl_records(tmp_path)) == sent(trainer)
    timed_out = [r for r in caplog.records if "did not flush within" in r.getMessage()]
    assert len(timed_out) == 1, [r.getMessage() for r in timed_out]


def test_a_hung_tracker_with_a_full_queue_is_abandoned(tmp_path, caplog, gate, record_property):
    """Back-pressure makes the loop wait on a full queue, but not forever: a queue that has
    not moved for tracker_stall_timeout is abandoned and training goes on."""
    hung = hung_tracker(gate, "log_metrics")
    trainer = make_trainer(tmp_path, [hung], tracker_queue_size=2, tracker_stall_timeout=0.5)
    # a daemon thread: were the loop to wait forever, the test would still end
    worker = threading.Thread(target=trainer.train, daemon=True)
    worker.start()
    worker.join(300)  # six steps and the 0.5 s wait; far longer only if it never gives up
    stuck = worker.is_alive()
    gate.set()
    worker.join(60)
    assert not stuck, "training waited forever on a hung tracker's full queue"
    count = sent(trainer)
    report(record_property, count, jsonl=len(jsonl_records(tmp_path)), hung=hung.received)
    assert len(jsonl_records(tmp_path)) == count == 7
    warning = [m for m in abandoned_warnings(caplog) if "'hung'" in m][0]
    assert "no progress for 0.5 s with a full queue" in warning
    assert "tracker_stall_timeout" in warning
    held = int(re.search(r"with (\d+) records", warning).group(1))
    # one record in its hands and a full queue (the one the loop waited to put may count)
    assert held in (3, 4)
    assert read_run(find_runs(tmp_path)[-1]).delivery["hung"]["abandoned"] == held
