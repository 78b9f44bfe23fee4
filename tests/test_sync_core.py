"""``trackmux sync``: replaying jsonl run logs written by a real Trainer into a tracker.

The tracker here keeps its "remote" runs in a dict that outlives each tracker object, like a
server would, and purges the points after the checkpoint a training resumes from, like
TensorBoard does. The real MLflow and TensorBoard are in tests/integration/test_sync.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path
from typing import ClassVar

import pytest

from trackmux.cli import main
from trackmux.plugins import PluginRegistry, get_registry
from trackmux.runlog import events_path, read_run
from trackmux.sync import (
    STATE_FILE,
    SyncError,
    nested_config,
    split_sessions,
    superseded,
    sync_run,
)
from trackmux.testing import StopAt, describe_child, run_child, run_training
from trackmux.tracker import Tracker


class RemoteTracker(Tracker):
    name = "remote"
    RUNS: ClassVar[dict[str, dict]] = {}
    #: method name -> exception to raise there (to test a tracker failing mid-sync)
    FAIL: ClassVar[dict[str, BaseException]] = {}
    #: the settings of every instance created
    CREATED: ClassVar[list[dict]] = []

    def __init__(self, **settings):
        super().__init__(**settings)
        self.CREATED.append(settings)

    def start(self, run):
        if run.resume:
            self.run_id = run.resume["id"]
            data = self.RUNS[self.run_id]
            if run.kind == "train":
                data["points"] = [p for p in data["points"] if p[1] <= run.step]
        else:
            self.run_id = f"r{len(self.RUNS)}"
            data = self.RUNS[self.run_id] = {
                "name": run.name,
                "params": {},
                "points": [],
                "summary": {},
                "artifacts": [],
                "opened": [],
                "status": None,
            }
        data["opened"].append((run.kind, run.step, bool(run.resume)))
        data["params"].update(run.config)
        data["status"] = "running"
        return {"id": self.run_id}

    def log_metrics(self, metrics, step, epoch=None):
        self._maybe_fail("log_metrics")
        data = self.RUNS[self.run_id]
        data["points"] += [(name, step, value, epoch) for name, value in metrics.items()]

    def log_summary(self, metrics, step):
        self.RUNS[self.run_id]["summary"].update(metrics)

    def log_params(self, params):
        self.RUNS[self.run_id]["params"].update(params)

    def log_artifact(self, path, kind, step):
        self.RUNS[self.run_id]["artifacts"].append((os.path.basename(path), kind, step))

    def finish(self, status):
        self.RUNS[self.run_id]["status"] = status

    def where(self):
        return f"remote run {self.run_id}"

    def _maybe_fail(self, method):
        error = self.FAIL.pop(method, None)
        if error is not None:
            raise error


@pytest.fixture
def remote(trackmux_env, monkeypatch):
    """The remote store, empty, with ``remote`` registered as a plugin for ``--to``."""
    RemoteTracker.RUNS.clear()
    RemoteTracker.FAIL.clear()
    RemoteTracker.CREATED.clear()
    scratch = PluginRegistry()
    scratch.add_tracker(RemoteTracker)
    monkeypatch.setitem(get_registry().plugins, "remote", scratch.get("remote"))
    return RemoteTracker.RUNS


def history(data, name):
    return [(step, value) for metric, step, value, _ in data["points"] if metric == name]


def assert_same_as_log(data, run_dir):
    log = read_run(run_dir)
    names = {metric for metric, *_ in data["points"]}
    assert names == set(log.metrics)
    for name, expected in log.metrics.items():
        assert history(data, name) == expected, name
    assert data["summary"] == log.summary
    assert data["status"] == (log.status or "killed")


def sync(run_dir):
    return main(["sync", str(run_dir), "--to", "remote"])


RUN = "out/runs/conformance"
CRASH = textwrap.dedent(
    """
    import os, sys
    from trackmux import TrainerCallback
    from trackmux.testing import run_training

    class Die(TrainerCallback):  # the process is killed: no finish record, no cleanup
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == 7:
                os._exit(9)

    run_training(sys.argv[1], callbacks=[Die()])
    """
)


def crash_at_step_7(output_dir):
    done = run_child([sys.executable, "-c", CRASH, str(output_dir)], check=False)
    assert done.returncode == 9, describe_child(done)


def test_sync_replays_params_metrics_summary_and_status(remote, trackmux_env, capsys):
    trainer = run_training("out")
    trainer.evaluate()
    assert sync(RUN) == 0
    out = capsys.readouterr().out
    [(run_id, data)] = remote.items()
    log = read_run(RUN)
    assert data["name"] == "conformance"
    assert_same_as_log(data, RUN)
    assert history(data, "train/loss") == log.metrics["train/loss"]
    assert [s for s, _ in history(data, "train/loss")] == [2, 4, 6, 8]
    # the epoch of every point arrives too
    assert {(step, epoch) for name, step, _, epoch in data["points"] if name == "train/loss"} == {
        (2, 0.5),
        (4, 1.0),
        (6, 1.5),
        (8, 2.0),
    }
    # params: the log's flat config, nested and flattened again by the tracker
    assert data["params"]["learning_rate"] == 0.01
    assert data["params"]["model/hidden"] == 16 and data["params"]["dataset"] == "toy-regression"
    # the train session, then the evaluate that reopened the run
    assert data["opened"] == [("train", 0, False), ("evaluate", 8, True)]
    assert f"remote: sent 8 record(s) in 2 session(s), {len(log.records)} in all, " in out
    assert f"closed success -> remote run {run_id}" in out
    state = json.loads((trackmux_env / RUN / STATE_FILE).read_text())
    assert state["trackers"]["remote"]["identity"] == {"id": run_id}
    assert state["trackers"]["remote"]["records"] == len(log.records)
    assert state["trackers"]["remote"]["status"] == "success"


def test_a_second_sync_sends_nothing(remote, capsys):
    run_training("out")
    assert sync(RUN) == 0
    first = json.loads(json.dumps(remote))
    capsys.readouterr()
    assert sync(RUN) == 0
    assert json.loads(json.dumps(remote)) == first
    assert "remote: up to date (" in capsys.readouterr().out


def test_crashed_run_is_closed_killed_and_continued_when_resumed(remote, trackmux_env):
    crash_at_step_7(trackmux_env / "out")
    assert read_run(RUN).status is None  # killed: no finish record
    assert sync(RUN) == 0
    [(run_id, data)] = remote.items()
    assert data["status"] == "killed"
    assert [s for s, _ in history(data, "train/loss")] == [2, 4, 6]
    assert_same_as_log(data, RUN)

    run_training("out", resume=True)  # from checkpoint-4: step 6 again, then 8
    assert sync(RUN) == 0
    assert list(remote) == [run_id]  # the same remote run, continued
    assert data["status"] == "success"
    assert data["opened"] == [("train", 0, False), ("train", 4, True)]
    assert [s for s, _ in history(data, "train/loss")] == [2, 4, 6, 8]
    assert_same_as_log(data, RUN)


def test_interrupted_and_resumed_before_any_sync_sends_each_step_once(remote):
    with pytest.raises(KeyboardInterrupt):
        run_training("out", callbacks=[StopAt(7, KeyboardInterrupt())])
    run_training("out", resume=True)
    sent = []
    original = RemoteTracker.log_metrics

    def counting(self, metrics, step, epoch=None):
        sent.extend((name, step) for name in metrics)
        original(self, metrics, step, epoch)

    RemoteTracker.log_metrics = counting
    try:
        assert sync(RUN) == 0
    finally:
        RemoteTracker.log_metrics = original
    # the interrupted session's step 6 was replaced by the resumed one's: sent once
    assert [step for name, step in sent if name == "train/loss"] == [2, 4, 6, 8]
    [data] = remote.values()
    assert data["opened"] == [("train", 0, False), ("train", 4, True)]
    assert_same_as_log(data, RUN)


def test_syncing_at_every_point_of_a_growing_log_equals_one_sync(remote, trackmux_env):
    """A sync while the run is going (after any record) and again later sends each record
    once, into one remote run."""
    with pytest.raises(KeyboardInterrupt):
        run_training("out", callbacks=[StopAt(7, KeyboardInterrupt())])
    run_training("out", resume=True).evaluate()
    path = events_path(RUN)
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    for count in range(1, len(lines) + 1):
        with open(path, "w", encoding="utf-8") as handle:
            handle.writelines(lines[:count])
        assert sync(RUN) == 0, f"after {count} records"
        [data] = remote.values()
        assert_same_as_log(data, RUN)
    assert len(remote) == 1


def test_a_record_being_written_is_left_for_the_next_sync(remote, trackmux_env):
    run_training("out")
    path = events_path(RUN)
    lines = Path(path).read_text(encoding="utf-8").splitlines(keepends=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(lines[:3])
        handle.write(lines[3][:20])  # half a line: the writer is at work
    with pytest.warns(UserWarning, match="torn last line"):  # read_run says it skipped it
        assert sync(RUN) == 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.writelines(lines)
    assert sync(RUN) == 0
    [data] = remote.values()
    assert_same_as_log(data, RUN)


def test_artifacts_are_sent_while_their_directory_exists(remote, trackmux_env, capsys):
    run_training("out", tracker_artifacts="checkpoint")
    shutil.rmtree(trackmux_env / "out" / "checkpoint-4")
    assert sync(RUN) == 0
    captured = capsys.readouterr()
    assert f"artifact {trackmux_env / 'out' / 'checkpoint-4'} no longer exists" in captured.err
    assert "1 artifact(s) gone" in captured.out
    [data] = remote.values()
    assert data["artifacts"] == [("checkpoint-8", "checkpoint", 8)]


def test_params_logged_after_the_start_are_replayed(remote, trackmux_env):
    from trackmux.run import start_run

    with start_run(["jsonl"], output_dir="out", run_name="loop", config={"lr": 0.1}) as run:
        run.log({"loss": 1.0}, step=1)
        run.log_params({"late": {"value": 3}})
        run.log({"loss": 0.5}, step=2)
    assert sync("out/runs/loop") == 0
    [data] = remote.values()
    assert data["params"] == {"lr": 0.1, "late/value": 3}
    assert history(data, "loss") == [(1, 1.0), (2, 0.5)]


def test_a_failing_tracker_exits_1_and_the_next_sync_continues_its_run(remote, capsys):
    trainer = run_training("out")
    trainer.evaluate()
    RemoteTracker.FAIL["log_metrics"] = ConnectionError("server went away")
    assert sync(RUN) == 1
    out = capsys.readouterr().out
    assert "remote: FAILED after 0 record(s): TrackerError" in out and "server went away" in out
    [(run_id, data)] = remote.items()
    assert data["status"] == "killed"
    state = json.loads(Path(RUN, STATE_FILE).read_text())
    assert state["trackers"]["remote"]["identity"] == {"id": run_id}
    assert state["trackers"]["remote"].get("records", 0) == 0

    assert sync(RUN) == 0
    # the remote run the failed sync opened is continued, not a second one; the training
    # session is sent again (the tracker purges what it held past the session's start)
    assert list(remote) == [run_id]
    assert_same_as_log(data, RUN)
    assert data["opened"] == [("train", 0, False), ("train", 0, True), ("evaluate", 8, True)]


def test_progress_is_saved_at_each_flush(remote, monkeypatch):
    import trackmux.replay

    monkeypatch.setattr(trackmux.replay, "FLUSH_EVERY", 2)
    run_training("out")
    log = read_run(RUN)
    metrics_at = [i for i, r in enumerate(log.records) if r["type"] == "metrics"]
    fail_at = log.records[metrics_at[3]]["metrics"]  # the 4th metrics record
    original = RemoteTracker.log_metrics

    def failing(self, metrics, step, epoch=None):
        if metrics == fail_at:
            raise ConnectionError("server went away")
        original(self, metrics, step, epoch)

    monkeypatch.setattr(RemoteTracker, "log_metrics", failing)
    assert sync(RUN) == 1
    state = json.loads(Path(RUN, STATE_FILE).read_text())["trackers"]["remote"]
    # a flush confirmed the records of steps 2 and 4 (not in the middle of step 4, which
    # has a train and an eval record); the failure came at step 6, before the next one
    assert [log.records[i]["step"] for i in metrics_at[:4]] == [2, 4, 4, 6]
    assert state["records"] == metrics_at[2] + 1
    assert state["step"] == 4
    monkeypatch.setattr(RemoteTracker, "log_metrics", original)
    assert sync(RUN) == 0
    [data] = remote.values()
    assert_same_as_log(data, RUN)
    # the continuation reopened the run at the last confirmed step
    assert data["opened"][1] == ("train", state["step"], True)


def test_ctrl_c_during_a_sync_exits_130_and_the_next_sync_goes_on(remote, monkeypatch, capsys):
    import trackmux.replay

    run_training("out")
    original = trackmux.replay.Replay._send
    sent = []

    def interrupted(self, record):
        if len(sent) == 3:
            raise KeyboardInterrupt  # Ctrl-C reaches the main thread, which is sending
        sent.append(record)
        return original(self, record)

    monkeypatch.setattr(trackmux.replay.Replay, "_send", interrupted)
    assert sync(RUN) == 130
    assert "interrupted; the next sync continues from here" in capsys.readouterr().err
    [data] = remote.values()
    assert data["status"] == "killed"
    monkeypatch.setattr(trackmux.replay.Replay, "_send", original)
    assert sync(RUN) == 0
    assert list(remote.values()) == [data]  # the same remote run
    assert_same_as_log(data, RUN)


@pytest.mark.parametrize(
    "to, message",
    [
        ("jsonl", "cannot sync into jsonl"),
        ("remote,jsonl", "cannot sync into jsonl"),
        ("all", "name the trackers"),
        (",", "names no tracker"),
        ("nosuch", "nosuch"),
    ],
)
def test_usage_errors_exit_2_before_anything_is_sent(remote, capsys, to, message):
    run_training("out")
    assert main(["sync", RUN, "--to", to]) == 2
    assert message in capsys.readouterr().err
    assert remote == {}
    assert not os.path.exists(os.path.join(RUN, STATE_FILE))


def test_tracker_config_settings_reach_the_tracker(remote):
    run_training("out")
    options = ["--tracker-config", "remote.url=http://127.0.0.1:1", "--tracker-config"]
    options.append('{"remote": {"retries": 3, "tags": {"a": "b"}}}')
    assert main(["sync", RUN, "--to", "remote", *options]) == 0
    assert RemoteTracker.CREATED == [
        {"url": "http://127.0.0.1:1", "retries": 3, "tags": {"a": "b"}}
    ]
    assert main(["sync", RUN, "--to", "remote", "--tracker-config", "bad"]) == 2
    assert main(["sync", RUN, "--to", "remote", "--tracker-config", "other.x=1"]) == 2
    assert main(["sync", RUN, "--to", "remote", "--tracker-config", '{"remote": 1}']) == 2


def test_a_missing_run_exits_1(remote, trackmux_env, capsys):
    assert sync(trackmux_env / "nothing") == 1
    assert "no run log" in capsys.readouterr().err


def test_a_rewritten_log_is_refused(remote, capsys):
    run_training("out")
    assert sync(RUN) == 0
    lines = Path(events_path(RUN)).read_text(encoding="utf-8").splitlines(keepends=True)
    with open(events_path(RUN), "w") as handle:
        handle.writelines(lines[:3])
    assert sync(RUN) == 1
    assert "was the log rewritten?" in capsys.readouterr().err
    # another run written under the same name: its first record differs
    os.remove(events_path(RUN))
    run_training("out")
    with pytest.raises(SyncError, match="written for another run log"):
        sync_run(RUN, ["remote"])
    assert len(remote) == 1


def test_one_sync_of_a_run_at_a_time(remote, capsys):
    fcntl = pytest.importorskip("fcntl")

    from trackmux.sync import LOCK_FILE

    run_training("out")
    with open(os.path.join(RUN, LOCK_FILE), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another sync at work
        assert sync(RUN) == 1
        assert "another trackmux sync, or the run's delivery process, is working on " in (
            capsys.readouterr().err
        )
    assert remote == {}
    assert sync(RUN) == 0 and len(remote) == 1


def test_sync_of_an_output_dir_takes_its_newest_run(remote, capsys):
    run_training("out")
    assert main(["sync", "out", "--to", "remote"]) == 0
    assert "run conformance" in capsys.readouterr().out


def test_sync_run_takes_tracker_objects_and_refuses_jsonl(remote, trackmux_env):
    from trackmux.trackers.jsonl import JsonlTracker

    run_training("out")
    [result] = sync_run(RUN, trackers=[RemoteTracker()])
    assert result.error is None and result.status == "success"
    assert_same_as_log(next(iter(remote.values())), RUN)
    with pytest.raises(ValueError, match="cannot sync into jsonl"):
        sync_run(RUN, trackers=[JsonlTracker()])


def test_nested_config_rebuilds_the_tree_or_keeps_it_flat():
    assert nested_config({"lr": 1, "model/layers": 2, "model/act/name": "relu"}) == {
        "lr": 1,
        "model": {"layers": 2, "act": {"name": "relu"}},
    }
    flat = {"a": 1, "a/b": 2}
    assert nested_config(flat) == flat
    assert nested_config({"a/b": 2, "a": 1}) == {"a/b": 2, "a": 1}


def test_sessions_and_superseded_points():
    records = [
        {"type": "start", "kind": "train", "step": 0, "time": 1.0},
        {"type": "metrics", "step": 2, "metrics": {"x": 1}, "time": 2.0},
        {"type": "metrics", "step": 4, "metrics": {"x": 2}, "time": 3.0},
        {"type": "metrics", "step": 6, "metrics": {"x": 3}, "time": 4.0},
        {"type": "start", "kind": "train", "resumed": True, "step": 4, "time": 10.0},
        {"type": "metrics", "step": 6, "metrics": {"x": 4}, "time": 11.0},
        {"type": "finish", "status": "success", "time": 12.0},
    ]
    first, second = split_sessions(records)
    assert (first.begin, first.end, first.status, first.last_step) == (0, 4, None, 6)
    assert (first.started, first.ended) == (1.0, 4.0)
    assert (second.kind, second.resumed, second.step, second.status) == (
        "train",
        True,
        4,
        "success",
    )
    assert superseded(records) == {3}


def test_the_journal_is_read_in_parts_of_bounded_size(tmp_path):
    from trackmux.replay import Journal

    lines = [{"type": "metrics", "step": i, "pad": "x" * (5 if i != 3 else 300)} for i in range(8)]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path = Path(events_path(tmp_path))
    path.write_text(text + '{"type": "metrics", "st', encoding="utf-8")  # one being written
    journal = Journal(tmp_path)
    parts = []
    while part := journal.read(100):
        parts.append([record["step"] for _, record in part])
    # whole lines only, each part about the limit (a longer line is read whole), in order,
    # numbered as read_run numbers them; the line being written waits
    # (100 bytes: two lines of 46; the line of 346 bytes is read whole, with what follows it
    # up to the next newline in the last 100 bytes read)
    assert parts == [[0, 1], [2], [3, 4], [5, 6], [7]]
    assert journal.count == 8
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('ep": 8}\n')
    assert [(index, record["step"]) for index, record in journal.read(100)] == [(8, 8)]
