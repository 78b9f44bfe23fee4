"""trackmux.start_run: the plain-loop API over the same Run the Trainer's hub uses, plus what
every Run now does: batching metrics records, accounting per tracker, params after start."""

import logging
import threading
import time

import pytest

import trackmux
from test_trackers import Recorder, make_trainer
from trackmux import TrackerError, read_run
from trackmux.delivery import TrackerWorker


class Batching(Recorder):
    name = "batching"
    batch_window = 0.2

    def log_metrics_batch(self, records):
        self.calls.append(("batch", [step for _, step, _ in records]))
        super().log_metrics_batch(records)


class ParamsRecorder(Recorder):
    name = "params"

    def log_params(self, params):
        self.calls.append(("params", dict(params)))


def test_a_plain_loop_reports_params_metrics_summary_and_status(tmp_path):
    recorder = Recorder()
    with trackmux.start_run(
        ["jsonl"],
        trackers=[recorder],
        config={"lr": 0.1, "model": {"layers": 2}, "api_token": "hunter2"},
        output_dir=tmp_path,
        run_name="plain",
    ) as run:
        for step in range(5):
            run.log({"train/loss": 1.0 / (step + 1)}, step=step)
        run.log_summary({"train/runtime": 3.5})
    assert run.status == "success"
    assert recorder.runs[0].config == {"lr": 0.1, "model/layers": 2, "api_token": "***"}
    assert [call[1] for call in recorder.of("metrics")] == [0, 1, 2, 3, 4]
    assert recorder.of("finish") == [("finish", "success")]
    log = read_run(tmp_path / "runs" / "plain")
    assert log.status == "success"
    assert log.history("train/loss") == [(s, 1.0 / (s + 1)) for s in range(5)]
    assert log.summary == {"train/runtime": 3.5}
    assert log.config["api_token"] == "***"


def test_steps_count_on_from_the_last_one_and_only_numbers_are_kept(tmp_path, caplog):
    recorder = Recorder()
    with trackmux.start_run("none", trackers=[recorder], output_dir=tmp_path, step=10) as run:
        run.log({"a": 1})
        run.log({"a": 2, "note": "text"})
        run.log({"a": 3}, step=20)
        run.log({"a": 4})
    assert [(c[1], c[2]) for c in recorder.of("metrics")] == [
        (10, {"a": 1}),
        (11, {"a": 2}),
        (20, {"a": 3}),
        (21, {"a": 4}),
    ]
    assert sum("'note'" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.parametrize(
    ("error", "status"),
    [(ValueError("model broke"), "failed"), (KeyboardInterrupt(), "killed")],
)
def test_the_status_follows_how_the_block_ended_and_the_error_is_unchanged(tmp_path, error, status):
    recorder = Recorder()
    with (
        pytest.raises(type(error)) as raised,
        trackmux.start_run("none", trackers=[recorder], output_dir=tmp_path) as run,
    ):
        run.log({"loss": 1.0})
        raise error
    assert raised.value is error
    assert run.status == status
    assert recorder.of("finish") == [("finish", status)]


def test_params_before_the_first_record_join_the_config_later_ones_go_to_log_params(
    tmp_path, caplog
):
    plain, updating = Recorder(), ParamsRecorder()
    with trackmux.start_run(
        ["jsonl"], trackers=[plain, updating], config={"lr": 1}, output_dir=tmp_path
    ) as run:
        run.log_params({"batch": {"size": 32}})
        run.log({"loss": 1.0}, step=0)
        run.log_params({"late": True})
    assert plain.runs[0].config == {"lr": 1, "batch/size": 32}
    assert updating.of("params") == [("params", {"late": True})]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("recorder: cannot add params" in w and "late" in w for w in warnings)
    records = read_run(tmp_path / "runs" / run.name).records
    assert {"type": "params", "params": {"late": True}}.items() <= records[2].items()


def test_resume_continues_the_same_runs(tmp_path):
    with trackmux.start_run(["jsonl"], output_dir=tmp_path, run_name="first") as run:
        run.log({"loss": 2.0}, step=0)
    assert run.identities == {"jsonl": {"run": "first"}}
    with trackmux.start_run(
        ["jsonl"], output_dir=tmp_path, run_name="ignored", resume=run.identities, step=1
    ) as again:
        again.log({"loss": 1.0})
    log = read_run(tmp_path / "runs" / "first")
    assert log.history("loss") == [(0, 2.0), (1, 1.0)]
    assert log.sessions == 2 and log.statuses == ["success", "success"]


def test_artifacts_go_to_trackers_that_store_them(tmp_path):
    recorder = Recorder()
    with trackmux.start_run(["jsonl"], trackers=[recorder], output_dir=tmp_path) as run:
        run.log_artifact(str(tmp_path), kind="model", step=3)
    assert recorder.of("artifact") == [("artifact", "model", 3, str(tmp_path))]
    assert read_run(tmp_path / "runs" / run.name).artifacts[0]["kind"] == "model"


def test_strict_raises_the_first_tracker_error_at_finish(tmp_path):
    class Broken(Recorder):
        name = "broken"

        def log_metrics(self, metrics, step, epoch=None):
            raise ConnectionError("down")

    run = trackmux.start_run("none", trackers=[Broken()], output_dir=tmp_path, strict=True)
    run.log({"loss": 1.0})
    with pytest.raises(TrackerError, match="'broken' failed: ConnectionError"):
        run.finish()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue_size": 0}, "queue_size=0"),
        ({"close_timeout": -1}, "close_timeout=-1"),
        ({"resume": "abc"}, "resume='abc'"),
        ({"report_to": "nosuchtracker"}, "nosuchtracker"),
        ({"run_journal": "off"}, "run_journal='off'"),
    ],
)
def test_bad_options_are_refused_naming_the_field(tmp_path, options, message):
    options = {"report_to": "none", **options}
    with pytest.raises((ValueError, TypeError, trackmux.ReportToError), match=message):
        trackmux.start_run(options.pop("report_to"), output_dir=tmp_path, **options)


def test_run_log_rejects_a_non_integer_step(tmp_path):
    run = trackmux.start_run("none", output_dir=tmp_path)
    with pytest.raises(TypeError, match="step must be an int"):
        run.log({"loss": 1.0}, step=1.5)
    run.finish()


def test_queued_metrics_reach_a_tracker_in_batches_and_flush_does_not_wait_the_window(
    tmp_path,
):
    # a window no flush could outlast: had the flush marker not ended the batch, the flush
    # would give up (its timeout is far shorter) with the records still queued
    tracker = Batching(batch_window=3600)
    with trackmux.start_run("none", trackers=[tracker], output_dir=tmp_path) as run:
        for step in range(50):
            run.log({"loss": float(step)}, step=step)
        run.flush(timeout=120)
        at_flush = [call[1] for call in tracker.of("metrics")]
    batches = [steps for _, steps in tracker.of("batch")]
    assert [step for steps in batches for step in steps] == list(range(50))
    assert len(batches) < 50  # gathered, not one call per record
    assert [call[1] for call in tracker.of("metrics")] == list(range(50))
    assert at_flush == list(range(50))  # the flush marker ends the batch


def test_a_bad_batch_window_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_window=-1"):
        TrackerWorker(Batching(batch_window=-1))


def test_every_run_accounts_for_each_trackers_cost_in_one_line_and_in_the_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trackmux")

    class Slow(Recorder):
        name = "slow"

        def log_metrics(self, metrics, step, epoch=None):
            time.sleep(0.01)
            super().log_metrics(metrics, step, epoch)

    trainer = make_trainer(tmp_path, [Slow()], report_to=["jsonl"], tracker_queue_size=2)
    trainer.train()
    line = next(r.getMessage() for r in caplog.records if "tracker time:" in r.getMessage())
    assert "jsonl " in line and "slow " in line
    log = read_run(trainer.args.output_dir + f"/runs/{trainer.state.run_name}")
    delivery = [r for r in log.records if r["type"] == "delivery"]
    assert len(delivery) == 1
    slow = delivery[0]["trackers"]["slow"]
    assert slow["records"] == slow["delivered"] == 7  # 6 logs + the summary
    local = delivery[0]["trackers"]["jsonl"]
    assert local["records"] == local["delivered"] == 7
    assert slow["busy_s"] >= 0.06
    assert 1 <= slow["max_queue"] <= 2
    assert log.records[-1]["type"] == "finish"  # the delivery record comes right before it


def test_the_progress_bar_names_the_tracker_the_loop_waits_on(tmp_path):
    from trackmux.trainer_callback import ProgressCallback

    release = threading.Event()

    class Stalled(Recorder):
        name = "stalled"

        def start(self, run):
            # nothing is delivered until the loop waits on the full queue and says so
            release.wait(300)  # longer than any training start, even on a loaded machine
            return super().start(run)

    trainer = make_trainer(tmp_path, [Stalled()], disable_tqdm=False, tracker_queue_size=2)
    progress = next(
        c for c in trainer.callback_handler.callbacks if isinstance(c, ProgressCallback)
    )
    shown = []

    def show(name, pending):
        ProgressCallback.show_tracker_wait(progress, name, pending)
        bar = progress.training_bar  # None once training ended (the summary can wait too)
        shown.append((name, bar.desc if bar is not None else None))
        if name == "stalled" and pending == 2:
            release.set()

    progress.show_tracker_wait = show
    trainer.train()
    assert ("stalled", "waiting for tracker stalled (2 queued)") in shown
    assert (None, "") in shown and shown[-1][0] is None  # cleared once the wait is over


def test_a_run_with_no_trackers_is_free_and_finishes(tmp_path):
    run = trackmux.start_run("none", output_dir=tmp_path, run_journal=False)
    run.log({"loss": 1.0})
    run.finish()
    assert run.status == "success" and run.trackers == [] and run.where() == []
    assert not (tmp_path / "runs").exists()


def test_report_to_none_keeps_the_journal_of_a_plain_loop(tmp_path):
    with trackmux.start_run("none", output_dir=tmp_path, run_name="loop") as run:
        run.log({"loss": 1.0}, step=3)
    assert [tracker.name for tracker in run.trackers] == ["jsonl"]
    assert read_run(tmp_path / "runs" / "loop").history("loss") == [(3, 1.0)]
    run.finish("failed")  # a second finish changes nothing
    assert run.status == "success"


def test_a_tracker_raising_systemexit_in_its_worker_is_disabled_not_silently_dead(tmp_path, caplog):
    class Exits(Recorder):
        name = "exits"

        def log_metrics(self, metrics, step, epoch=None):
            raise SystemExit(3)

    exits, healthy = Exits(), Recorder()
    with trackmux.start_run("none", trackers=[exits, healthy], output_dir=tmp_path) as run:
        for step in range(5):
            run.log({"loss": 1.0}, step=step)
    # finish did not wait out the close timeout for a dead worker and give up on it
    assert not [r for r in caplog.records if "abandoning" in r.getMessage()]
    assert exits.of("finish") == [("finish", "success")]  # the worker lived to close
    assert len(healthy.of("metrics")) == 5
    assert any("'exits' failed in log_metrics()" in r.getMessage() for r in caplog.records)


def test_a_run_resumed_after_a_torn_last_line_starts_on_a_line_of_its_own(tmp_path):
    with trackmux.start_run(["jsonl"], output_dir=tmp_path, run_name="torn") as run:
        run.log({"loss": 2.0}, step=0)
    events = tmp_path / "runs" / "torn" / "events.jsonl"
    with open(events, "a", encoding="utf-8") as handle:
        handle.write('{"type": "metrics", "step": 1, "metr')  # killed mid-write
    with trackmux.start_run(["jsonl"], output_dir=tmp_path, resume=run.identities, step=1) as again:
        again.log({"loss": 1.0})
    with pytest.warns(UserWarning):
        log = read_run(events)
    assert log.sessions == 2
    assert log.history("loss") == [(0, 2.0), (1, 1.0)]


def test_a_new_run_under_a_used_name_gets_its_own_log(tmp_path):
    for loss in (2.0, 1.0):
        with trackmux.start_run(["jsonl"], output_dir=tmp_path, run_name="same") as run:
            run.log({"loss": loss}, step=0)
    assert run.identities == {"jsonl": {"run": "same-2"}}
    assert read_run(tmp_path / "runs" / "same").history("loss") == [(0, 2.0)]
    assert read_run(tmp_path / "runs" / "same-2").history("loss") == [(0, 1.0)]


def test_a_tracker_abandoned_for_a_full_queue_is_not_waited_for_again_at_close(tmp_path, caplog):
    release = threading.Event()

    class Hung(Recorder):
        name = "hung"

        def log_metrics(self, metrics, step, epoch=None):
            release.wait(120)  # hung until the run is over

    # were finish to wait for it again, the close timeout would run out on a tracker still
    # hung, and abandoning it a second time says so
    run = trackmux.start_run(
        "none",
        trackers=[Hung()],
        output_dir=tmp_path,
        queue_size=1,
        stall_timeout=0.3,
        close_timeout=1,
    )
    for step in range(5):
        run.log({"loss": 1.0}, step=step)
    run.finish()
    release.set()
    warnings = [r.getMessage() for r in caplog.records if "abandoning" in r.getMessage()]
    # given up on once, not a second timeout
    assert len(warnings) == 1 and "made no progress" in warnings[0]
