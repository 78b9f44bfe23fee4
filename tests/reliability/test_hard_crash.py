"""Issue 8, scenario 4: ``kill -9`` of a training process mid-run. The jsonl log holds
every record logged before the kill (each is flushed to the operating system as it is
written; fsync at each save and at the end covers a machine crash up to that point), it
stays readable (a torn last line is skipped with a warning), and trackmux tells that the run
did not finish."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from reliability_helpers import file_records, report, start_endless_training, wait_for_step

from trackmux.runlog import RunLogWarning, read_run
from trackmux.testing import describe_child, rest_of_output, run_child


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("killed")
    process = start_endless_training(output_dir)
    try:
        logged = wait_for_step(process, 30)
        process.kill()  # SIGKILL: no handler, no cleanup, no flush
        stdout, stderr = rest_of_output(process, timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -9, describe_child(process, stdout, stderr)
    return output_dir, logged


def test_every_record_logged_before_the_kill_is_in_the_log(killed_run, record_property):
    output_dir, logged = killed_run
    run = read_run(output_dir / "runs" / "endless")
    steps = [step for step, _ in run.history("train/loss")]
    recorder = [r for r in file_records(output_dir / "recorder.jsonl") if r["type"] == "metrics"]
    report(record_property, logged, jsonl=len(steps), recorder=len(recorder))
    # the process may have logged a step or two after saying so; never fewer
    assert steps[:logged] == list(range(1, logged + 1))
    assert steps == list(range(1, len(steps) + 1))
    # an asynchronous tracker loses what was still in its queue: only the jsonl log promises
    assert len(recorder) <= len(steps)


def test_the_run_reads_as_not_finished(killed_run):
    output_dir, _ = killed_run
    run = read_run(output_dir / "runs" / "endless")
    assert run.status is None and not run.finished
    assert run.records[-1]["type"] == "metrics"
    shown = trackmux("show", "--json", str(output_dir / "runs" / "endless"))
    assert shown.returncode == 0, describe_child(shown)
    summary = json.loads(shown.stdout)
    assert summary["finished"] is False and summary["status"] is None, describe_child(shown)
    text = trackmux("show", str(output_dir))  # an output_dir: its latest run
    assert text.returncode == 0, describe_child(text)
    assert "no finish record" in text.stdout, describe_child(text)


def test_a_torn_last_line_is_skipped_with_a_warning(killed_run, tmp_path):
    output_dir, _ = killed_run
    events = (output_dir / "runs" / "endless" / "events.jsonl").read_text()
    complete = read_run(output_dir / "runs" / "endless")
    torn = tmp_path / "events.jsonl"
    # what a kill in the middle of a write leaves: half a record, no newline
    torn.write_text(events + '{"type": "metrics", "step": 99999, "metr')
    with pytest.warns(RunLogWarning, match=r"events.jsonl:\d+: skipped a torn last line"):
        run = read_run(torn)
    assert run.metrics == complete.metrics
    assert run.skipped == [len(events.splitlines()) + 1]
    shown = trackmux("show", "--json", str(torn))
    assert shown.returncode == 0, describe_child(shown)
    assert "torn last line" in shown.stderr, describe_child(shown)


def test_a_damaged_line_in_the_middle_does_not_hide_the_rest(tmp_path):
    lines = [
        {"type": "start", "run": "r", "kind": "train", "config": {"lr": 0.1}},
        {"type": "metrics", "step": 1, "metrics": {"train/loss": 1.0}},
        {"type": "metrics", "step": "two", "metrics": {"train/loss": 0.5}},
        ["not", "a", "record"],
        {"type": "metrics", "step": 3, "metrics": {"train/loss": 0.25}},
        {"type": "finish", "status": "success"},
    ]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n\x00\x00garbage\n")
    with pytest.warns(RunLogWarning) as warned:
        run = read_run(path)
    assert len(warned) == 3
    assert run.history("train/loss") == [(1, 1.0), (3, 0.25)]
    assert run.status == "success" and run.skipped == [3, 4, 7]


def trackmux(*arguments: str) -> subprocess.CompletedProcess:
    return run_child([sys.executable, "-m", "trackmux", *arguments], timeout=60, check=False)
