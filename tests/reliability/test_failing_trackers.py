"""Issue 8, scenario 1: a tracker that raises in every call, only at start, or only at
finish never costs the run: training completes, the jsonl log and the other trackers receive
every record, the failure is reported once with the tracker's name; strict mode raises the
first error instead."""

from __future__ import annotations

import logging

import pytest
from reliability_helpers import Recorder, jsonl_records, make_trainer, report, sent

from trackmux import TrackerError
from trackmux.runlog import find_runs, read_run

EVERY_CALL = ("start", "log_metrics", "log_summary", "finish")
FAILURES = {"every call": EVERY_CALL, "start": ("start",), "finish": ("finish",)}


class Flaky(Recorder):
    name = "flaky"


@pytest.mark.parametrize("where", list(FAILURES))
def test_a_failing_tracker_costs_the_run_nothing(tmp_path, caplog, record_property, where):
    flaky, healthy = Flaky(fails_in=FAILURES[where]), Recorder()
    trainer = make_trainer(tmp_path, [flaky, healthy])
    trainer.train()

    assert trainer.state.global_step == 6
    count = sent(trainer)
    assert count == 7  # six steps and the summary
    logged = jsonl_records(tmp_path)
    report(
        record_property, count, jsonl=len(logged), recorder=healthy.received, flaky=flaky.received
    )
    assert len(logged) == count
    assert healthy.received == count
    assert [call[1] for call in healthy.of("metrics")] == [1, 2, 3, 4, 5, 6]
    assert healthy.calls[-1] == ("finish", "success")
    assert read_run(find_runs(tmp_path)[-1]).status == "success"
    # a tracker that could not start gets nothing more; one failing at finish got everything
    assert flaky.received == (count if where == "finish" else 0)

    failures = [
        r for r in caplog.records if r.levelno >= logging.ERROR and " failed in " in r.getMessage()
    ]
    assert len(failures) == 1, [r.getMessage() for r in failures]
    message = failures[0].getMessage()
    assert "'flaky'" in message
    assert f"flaky backend down in {FAILURES[where][0]}" in message  # with its traceback
    assert not any(
        "'recorder'" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )


@pytest.mark.parametrize("where", list(FAILURES))
def test_strict_mode_raises_the_first_error(tmp_path, where):
    flaky = Flaky(fails_in=FAILURES[where])
    trainer = make_trainer(tmp_path, [flaky], tracker_strict=True)
    with pytest.raises(TrackerError, match="'flaky' failed") as raised:
        trainer.train()
    assert raised.value.__cause__ is flaky.errors[0]
    if where == "finish":  # the failure came at the very end: every step had run
        assert trainer.state.global_step == 6
    # a failed start is raised at the first record submitted after the worker met it: when
    # exactly depends on the worker thread, so no step count is asserted for it
