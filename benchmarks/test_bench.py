"""Checks that the benchmark measures what it claims: ``pytest benchmarks``."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
import time

import as_user
import dispatch
import memory
import peers
import pytest
import run
import startup
from contenders import (
    SLOW_TRACKER_DELAY,
    TASKS,
    Window,
    build_contenders,
    peer_contenders,
    plain_model,
    run_trackmux,
    settle,
    trackmux_model,
)

from trackmux import Tracker, Trainer, TrainerCallback, TrainingArguments
from trackmux.plugins import PluginRegistry
from trackmux.testing import run_child
from trackmux.trackers.jsonl import JsonlTracker


@pytest.mark.parametrize(("model", "logging_steps"), [("tiny", 1), ("tiny", 3), ("medium", 2)])
def test_plain_loop_does_the_trainers_math(tmp_path, model, logging_steps):
    # same batches, same updates, same schedule: otherwise the floor is not the same work
    window = Window(steps=6, warmup=2, logging_steps=logging_steps)
    plain, plain_result = plain_model(TASKS[model], window)
    mine, result = trackmux_model(TASKS[model], window, "none", str(tmp_path))
    theirs = mine.state_dict()
    for name, value in plain.state_dict().items():
        assert (value - theirs[name]).abs().max().item() <= 1e-6, name
    assert plain_result.per_step > 0 and result.per_step > 0
    assert plain_result.info["logged"] == window.total // logging_steps


def test_slow_tracker_does_not_hold_the_loop(tmp_path):
    window = Window(steps=30, warmup=5, logging_steps=1)
    result = run_trackmux(TASKS["tiny"], window, "none", str(tmp_path), slow=True)
    # waiting for the tracker would cost at least its delay on every step
    assert result.per_step < SLOW_TRACKER_DELAY / 2
    # one record per step plus the training summary, none dropped
    assert result.info["delivered"] == result.info["logged"] == window.total + 1


def test_settle_waits_for_a_trackers_start(tmp_path):
    go = threading.Event()

    class SlowStart(Tracker):
        name = "slow-start"
        started = False

        def start(self, run):
            go.wait(300)  # not started before the first step ends, however slow the machine
            time.sleep(0.3)  # and slow once let go: a settle that did not wait would show it
            self.started = True

        def log_metrics(self, metrics, step, epoch=None):
            pass

        def finish(self, status):
            pass

    tracker = SlowStart()
    seen = []

    class Check(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 1:
                seen.append(tracker.started)
                go.set()
                settle(trainer)
                seen.append(tracker.started)

    args = TrainingArguments(
        output_dir=str(tmp_path), report_to="none", max_steps=2, save_strategy="no"
    )
    trainer = Trainer(
        TASKS["tiny"].model(),
        args,
        train_dataset=TASKS["tiny"].dataset(2),
        callbacks=[Check()],
        trackers=[tracker],
    )
    trainer.train()
    assert seen == [False, True]


def _tracker(name: str):
    return type(f"{name.title()}Tracker", (Tracker,), {"name": name})


def _registry(*names: str) -> PluginRegistry:
    registry = PluginRegistry()
    registry.add_tracker(JsonlTracker, builtin=True)
    for name in names:
        registry.add_tracker(_tracker(name))
    return registry


def test_contenders_without_backends():
    chosen, skipped = build_contenders(_registry(), peers=False)
    assert [c.name for c in chosen] == ["plain", "trackmux-none", "trackmux-jsonl", "slow-tracker"]
    reasons = dict(skipped)
    assert reasons["trackmux-jsonl+tensorboard"] == "not available: tensorboard"
    assert "mlflow" in reasons["trackmux-jsonl+tensorboard+mlflow+dvclive"]
    assert reasons["trackmux-all"] == "same trackers as trackmux-jsonl"


def test_contenders_with_backends():
    chosen, skipped = build_contenders(
        _registry("tensorboard", "mlflow", "dvclive", "wandb"), peers=False
    )
    names = [c.name for c in chosen]
    assert names == [
        "plain",
        "trackmux-none",
        "trackmux-jsonl",
        "trackmux-jsonl+tensorboard",
        "trackmux-jsonl+tensorboard+mlflow+dvclive",
        "trackmux-all",
        "slow-tracker",
    ]
    assert chosen[names.index("trackmux-all")].trackers == {
        "jsonl",
        "tensorboard",
        "mlflow",
        "dvclive",
        "wandb",
    }
    assert skipped == []


def test_extra_tracker_sets():
    chosen, skipped = build_contenders(
        _registry("mlflow"), extra=[["mlflow"], ["dvclive"]], peers=False
    )
    mlflow = next(c for c in chosen if c.name == "trackmux-mlflow")
    assert mlflow.report_to == ["mlflow"] and mlflow.trackers == {"mlflow"}
    assert ("trackmux-dvclive", "not available: dvclive") in skipped
    assert chosen[-1].name == "slow-tracker"


def test_all_is_skipped_when_it_adds_nothing():
    chosen, skipped = build_contenders(_registry("tensorboard"), peers=False)
    assert "trackmux-all" not in [c.name for c in chosen]
    assert ("trackmux-all", "same trackers as trackmux-jsonl+tensorboard") in skipped


def test_run_writes_results(tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main(
        ["--quick", "--models", "tiny", "--steps", "20", "--repeats", "2", "--parts", "steps"]
        + ["--out", str(out), "--contenders", "trackmux-none,slow-tracker"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = {(r["logging_steps"], r["contender"]): r for r in results["results"]}
    assert set(rows) == {
        (interval, name)
        for interval in (1, 10)
        for name in ("plain", "trackmux-none", "slow-tracker")
    }
    for (_, name), row in rows.items():
        assert len(row["per_repeat_s"]) == 2 and len(row["cpu_per_repeat_s"]) == 2
        assert row["median_s"] > 0
        if name == "plain":
            assert row["ratio"] == 1.0 and row["cpu_ratio"] == 1.0
    assert rows[1, "slow-tracker"]["slow_tracker"]["all_delivered"]
    assert results["equivalence"]["tiny"]["same"]
    assert results["machine"]["torch_threads"] == 1
    assert (out / "results.png").is_file() == (importlib.util.find_spec("matplotlib") is not None)
    table = capsys.readouterr().out
    assert "trackmux-none" in table and "slow-tracker" in table


def test_parse_importtime():
    stderr = "\n".join(
        [
            "import time: self [us] | cumulative | imported package",
            "import time:       100 |        100 | site",
            "import time:        30 |         30 |   importlib",
            "import time:      1500 |       1530 | trackmux",
        ]
    )
    parsed = startup.parse_importtime(stderr)
    assert parsed["total_self_us"] == 1630
    assert parsed["trackmux_cumulative_us"] == 1530
    assert parsed["modules"] == 3
    assert parsed["slowest_self_us"][0] == ["trackmux", 1500]


def test_startup_figures():
    result = startup.measure(runs=1)
    assert result["import"]["python_import_trackmux_s"] > 0
    assert result["import"]["importtime"]["trackmux_cumulative_us"] > 0
    assert result["discovery"]["plugins"]["jsonl"] == "available"
    assert result["discovery"]["get_registry_s"] > 0
    construction = result["construction"]
    assert construction["construction_s"] == pytest.approx(
        construction["import_trainer_s"]
        + construction["arguments_s"]
        + construction["trainer_init_s"]
    )
    command = result["plugins_command"]
    assert command["trackmux_plugins_s"] >= command["trackmux_plugins_min_s"] > 0
    assert command["plugins_found"] == len(result["discovery"]["plugins"])
    assert 1 <= command["plugins_available"] <= command["plugins_found"]
    report = startup.format_report(result)
    assert "import trackmux" in report and "trackmux plugins" in report


def test_profile_names_trackmux_functions(tmp_path):
    import profiling
    from contenders import Contender

    window = Window(steps=30, warmup=5, logging_steps=1)
    report = profiling.compare(
        Contender("trackmux-none", "none"), TASKS["tiny"], window, str(tmp_path)
    )
    extra = {cost["label"]: cost for cost in report["extra"]}
    event = next(label for label in extra if label.endswith("(_event)"))
    assert label_in_trackmux(event)
    assert extra[event]["calls"] >= 2 and extra[event]["plain_calls"] == 0
    assert any(c["label"].endswith("(train_step)") for c in report["plain_only"])
    assert any(
        c["label"].endswith("(_maybe_log_save_evaluate)") for c in report["trackmux_cumulative"]
    )
    text = profiling.format_report(report)
    assert "+" + event in text


def label_in_trackmux(label: str) -> bool:
    return label.startswith("trackmux/")


# --------------------------------------------------------------------------- peers

PEERS = ["transformers", "transformers+tensorboard", "lightning", "lightning+tensorboard"]


def test_peers_run_or_say_why_not():
    chosen, skipped = peer_contenders()
    assert sorted([c.name for c in chosen] + [name for name, _ in skipped]) == sorted(PEERS)
    for name, why in skipped:
        assert why.startswith("not installed: "), (name, why)
    for contender in chosen:
        assert not contender.plain and contender.report_to is None
        assert ("tensorboard" in contender.trackers) == contender.name.endswith("+tensorboard")
    # they come after trackmux's own contenders, so the table reads trackmux first
    names = [c.name for c in build_contenders(_registry())[0]]
    assert names[: names.index("slow-tracker") + 1][-1] == "slow-tracker"
    assert set(names[names.index("slow-tracker") + 1 :]) == {c.name for c in chosen}


@pytest.mark.parametrize("tensorboard", [False, True])
def test_transformers_trainer_is_timed(tmp_path, tensorboard):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    if tensorboard:
        pytest.importorskip("tensorboard")
    window = Window(steps=12, warmup=3, logging_steps=5)
    result = peers.run_transformers(TASKS["tiny"], window, str(tmp_path), tensorboard)
    assert 0 < result.per_step < 1.0
    assert result.info["logged"] == window.total // window.logging_steps
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert bool(events) == tensorboard


@pytest.mark.parametrize("model", ["tiny", "medium"])
def test_lightning_does_the_plain_loops_math(tmp_path, model):
    if peers.lightning_missing():
        pytest.skip(peers.lightning_missing())
    window = Window(steps=6, warmup=2, logging_steps=2)
    plain, _ = plain_model(TASKS[model], window)
    theirs, result = peers.lightning_model(TASKS[model], window, str(tmp_path))
    state = theirs.state_dict()
    for name, value in plain.state_dict().items():
        assert (value - state[name]).abs().max().item() <= 1e-6, name
    assert result.per_step > 0


def test_lightning_with_tensorboard_writes_events(tmp_path):
    if peers.lightning_missing() or peers.tensorboard_missing():
        pytest.skip("needs lightning and tensorboard")
    window = Window(steps=4, warmup=2, logging_steps=1)
    result = peers.run_lightning(TASKS["tiny"], window, str(tmp_path), tensorboard=True)
    assert result.per_step > 0
    assert list(tmp_path.rglob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- dispatch


def test_dispatch_reaches_every_callback(tmp_path):
    cases, callbacks = dispatch.callback_cases(3, str(tmp_path))
    cases["on_step_end"]["trackmux"](7)
    cases["on_log"]["trackmux"](4)
    assert [cb.calls for cb in callbacks] == [11, 11, 11]
    cases["on_step_end"]["plain"](5)  # the floor calls the same objects
    assert [cb.calls for cb in callbacks] == [16, 16, 16]


def test_dispatch_through_the_hub_delivers_every_record(tmp_path):
    counting = dispatch._counting_tracker_class()
    with dispatch._queued([counting() for _ in range(2)]) as queues:
        hub, cases = dispatch.tracker_cases(2, str(tmp_path), 50, queues)
        assert set(cases) == {"plain", "hub-loop", "hub-delivered", "queue"}
        with hub.session("train"):
            cases["hub-loop"](30)
            cases["hub-delivered"](20)
            # flushed: every tracker has every record
            assert [t.calls for t in hub.trackers] == [50, 50]


def test_dispatch_measure_and_report():
    result = dispatch.measure(events=100, repeats=2, counts=(1, 2))
    rows = {(r["kind"], r["event"], r["count"]): r for r in result["rows"]}
    assert set(rows) == {
        (kind, event, count)
        for kind, event in (("callbacks", "on_step_end"), ("callbacks", "on_log"))
        + (("trackers", "on_log"),)
        for count in (1, 2)
    }
    for row in rows.values():
        assert row["ratio"]["plain"] == 1.0
        assert all(value > 0 for value in row["ns_per_event"].values())
        assert all(len(values) == 2 for values in row["per_repeat_ns"].values())
    tracker_row = rows["trackers", "on_log", 1]
    assert {"hub-loop", "hub-delivered", "queue"} <= set(tracker_row["ns_per_event"])
    text = dispatch.format_report(result)
    assert "on_step_end" in text and "trackers" in text


# --------------------------------------------------------------------------- memory


def test_memory_stays_bounded_and_every_record_arrives():
    result = memory.measure(stall_seconds=1.5, queue_sizes=(5, 60))
    assert result["steps"] == memory.ARM_AT_STEP + 2 * 60 + 100
    for one in result["runs"]:
        size = one["queue_size"]
        # the bound holds: never more queued than the limit; pending also counts the batch
        # in the stalled tracker's hands, taken off the queue (at most a queue's worth)
        assert one["worker"]["max_queue"] == size
        assert size < one["max_queue_depth_sampled"] <= 2 * size
        # the loop waited for room: most of the stall, since the queue fills in milliseconds
        assert one["worker"]["waited_s"] > 0.5 and one["worker"]["stalls"] >= 1
        assert one["longest_step_gap_s"] > 0.5
        # nothing was dropped
        assert one["all_delivered"] and one["delivered"] == one["logged"] == result["steps"]
        assert any("waiting for tracker stalling" in line for line in one["progress_bar"])
        assert one["rss_at_stall_bytes"] > 0 and one["ru_maxrss_bytes"] > 0
    text = memory.format_report(result)
    assert "all" in text and "MISSING" not in text


def test_stall_warning_after_the_threshold(monkeypatch, tmp_path):
    # the warning fires once the loop has waited STALL_WARNING_AFTER seconds: a stall just
    # past it, in-process (the child function) to keep the test short
    from trackmux import delivery

    monkeypatch.setattr(delivery, "STALL_WARNING_AFTER", 0.3)
    one = memory.child(queue_size=5, stall_seconds=1.0, steps=260, workdir=str(tmp_path))
    assert one["stall_warnings"] and "behind" in one["stall_warnings"][0]
    assert one["all_delivered"]


def test_run_measures_dispatch_and_memory(tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main(
        ["--quick", "--parts", "dispatch,memory", "--stall-seconds", "1"]
        + ["--queue-sizes", "5", "--out", str(out)]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert "results" not in results and "startup" not in results
    assert results["dispatch"]["rows"] and results["memory"]["runs"][0]["all_delivered"]
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert (out / "dispatch.png").is_file() == has_matplotlib
    printed = capsys.readouterr().out
    assert "hook dispatch" in printed and "memory: a tracker stalled 1 s" in printed


def test_parts_option():
    assert run.parse_args(["--startup"]).parts == ["startup"]
    assert run.parse_args(["--no-startup"]).parts == ["user", "dispatch", "memory"]
    assert run.parse_args([]).threads is None  # torch's default, unless the old method runs
    assert run.parse_args(["--parts", "memory"]).memory["stall_seconds"] == 60
    quick = run.parse_args(["--quick", "--queue-sizes", "7,70"])
    assert quick.memory == {"stall_seconds": 3.0, "queue_sizes": (7, 70)}
    with pytest.raises(SystemExit):
        run.parse_args(["--parts", "steps,nonsense"])


def _row(contender, ratio, median_s, model="tiny", logging_steps=10):
    return {
        "model": model,
        "logging_steps": logging_steps,
        "contender": contender,
        "ratio": ratio,
        "min_ratio": ratio,
        "median_s": median_s,
        "min_s": median_s,
    }


def test_targets_read_the_tiny_model_logging_every_10_steps():
    results = {
        "results": [
            _row("plain", 1.0, 100e-6),
            _row("trackmux-none", 1.04, 104e-6),
            _row("trackmux-jsonl+tensorboard+mlflow+dvclive", 1.2, 120e-6),
            _row("slow-tracker", 1.05, 105e-6),
            _row("transformers", 1.6, 160e-6),
            # other models and intervals are not what the targets are about
            _row("trackmux-none", 3.0, 300e-6, logging_steps=1),
        ],
        "memory": {"runs": [{"queue_size": 100, "logged": 10, "delivered": 10}]},
    }
    checks = {c["target"].split(" (")[0]: c for c in run.targets(results)}
    assert checks['report_to="none"']["met"] and checks['report_to="none"']["figure"] == 1.04
    assert not checks["jsonl + tensorboard + mlflow + dvclive"]["met"]
    slow = checks["a 50 ms tracker"]
    assert slow["figure"] == pytest.approx(105 / 104) and slow["met"]
    assert checks["trackmux-none beats transformers"]["figure"] == pytest.approx(1.04 / 1.6)
    assert checks["memory: records lost, queue 100"]["met"]
    assert "lightning" not in " ".join(checks)  # not run: no target line
    text = run.format_targets(list(checks.values()))
    assert "MISS" in text and "met" in text


# --------------------------------------------------------------------------- as a user meets it

ALL_KEYS = [c.key for c in as_user.CONFIGS + as_user.LONG]


def test_user_mode_reports_every_target(tmp_path, capsys, monkeypatch):
    # a few steps per run: the structure and the figures' sanity, never their size
    monkeypatch.setattr(as_user, "SAMPLE_EVERY", 0.02)
    out = tmp_path / "out"
    code = run.main(
        ["--parts", "user", "--user-steps", "20", "--window", "10", "--repeats", "1"]
        + ["--long", "--long-steps", "20", "--configs", "none,long-three"]
        + ["--out", str(out)]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    user = results["user"]
    rows = {row["key"]: row for row in user["rows"]}
    assert set(ALL_KEYS) <= set(rows)
    assert rows["four-10"]["skipped"] == rows["all-10"]["skipped"] == "not run (--configs)"
    measured = [row for row in rows.values() if "skipped" not in row]
    assert {"plain-10", "none", "long-none"} <= {row["key"] for row in measured}
    for row in measured:
        assert row["whole_s"] > 0 and row["steady_us_per_step"] > 0, row
        assert math.isfinite(row["whole_ratio"]) and row["whole_ratio"] > 0, row
        assert math.isfinite(row["steady_ratio"]) and row["steady_ratio"] > 0, row
        assert row["after_train_s"] >= 0 and row["left_running"] == [], row
        if row["limit"] is not None:
            assert row["whole_met"] == (row["whole_ratio"] <= row["limit"])
    assert rows["plain-10"]["whole_ratio"] == 1.0
    assert rows["none"]["baseline"] == "plain-10"
    assert rows["long-none"]["rss"]["training"]["end"] > 0
    # what the runs resolved report_to to, reported by the runs themselves
    assert user["trackers"]["none"] == [] and user["trackers"]["plain-10"] == []
    if "long-three" in user["runs"]:
        assert user["trackers"]["long-three"] == ["jsonl", "tensorboard", "mlflow"]
    for run_ in user["runs"]["none"]:
        assert run_["logged"] == 20 // 10 + 1  # two logs and the training summary
        assert len(run_["laps_s"]) == 1 and run_["torch_threads"] >= 1
        assert 0 < run_["first_lap_s"] < run_["train_s"]
    table = (out / "as-user.md").read_text()
    assert table in capsys.readouterr().out
    for row in rows.values():
        assert row["label"] in table
    assert '| RSS, report_to="none": training process |' in table
    assert "Load average (1, 5, 15 min):" in table
    assert "Command: `python benchmarks/run.py --parts user" in table
    # the same table again from the results file
    assert as_user.table_again(results) == table.rstrip("\n")


def _user_run(train_s: float, lap_s: float, rss: int = 100 * 2**20) -> dict:
    return {
        "train_s": train_s,
        "train_began": 0.0,
        "train_ended": 10.0,
        "laps_s": [2 * lap_s, lap_s, lap_s],  # the first window after start-up, then steady
        "window": 1000,
        "after_train_s": 0.5,
        "left_running": [],
        "samples": [
            {"t": t, "training": rss + int(t) * 2**20, "children": {"7": rss // 2}}
            for t in range(11)
        ],
    }


def test_user_table_says_met_or_miss_for_every_target():
    configs = [as_user.plain_config(10), as_user.plain_config(1)]
    configs += list(as_user.CONFIGS + as_user.LONG)
    runs = {
        "plain-10": [_user_run(10.0, 0.5)],
        "plain-1": [_user_run(11.0, 0.55)],
        "none": [_user_run(10.2, 0.51)],  # 1.02x: met
        "four-10": [_user_run(12.0, 0.6)],  # 1.2x: missed
        "four-1": [_user_run(12.1, 0.6)],
        "long-none": [_user_run(100.0, 0.5)],
        "long-three": [_user_run(110.0, 0.55, rss=200 * 2**20)],
    }
    rows = as_user.summarise(configs, runs, {"all-10": "not installed: wandb"})
    by_key = {row["key"]: row for row in rows}
    assert by_key["none"]["whole_ratio"] == pytest.approx(1.02)
    assert by_key["none"]["whole_met"] and by_key["none"]["steady_met"]
    assert not by_key["four-10"]["whole_met"]
    assert by_key["four-1"]["whole_ratio"] == pytest.approx(12.1 / 11.0)
    assert by_key["long-three"]["whole_ratio"] == pytest.approx(1.1)
    # steady: the median window, not the slow first one
    assert by_key["none"]["steady_us_per_step"] == pytest.approx(510)
    rss = by_key["long-three"]["rss"]
    assert rss["training"]["start"] == 201 * 2**20 and rss["training"]["end"] == 210 * 2**20
    assert rss["training"]["flat"] and rss["children"]["processes"] == 1
    result = {
        "settings": {"steps": 8000, "repeats": 1, "window": 1000, "threads": "torch default",
                     "long_steps": 100000},
        "rows": rows,
        "trackers": {"none": []},
        "load_average_start": [1.0, 2.0, 3.0],
        "load_average_end": [4.0, 5.0, 6.0],
        "elapsed_s": 60.0,
    }  # fmt: skip
    table = as_user.format_markdown(result, "python benchmarks/run.py --long")
    lines = table.splitlines()
    assert sum("met" in line or "MISS" in line for line in lines if line.startswith("|")) == 4
    assert any("MISS" in line and "1.20x" in line for line in lines)
    assert any("skipped: not installed: wandb" in line for line in lines)
    assert any("long, 100000 steps" in line and "<= 1.2x none" in line for line in lines)
    assert by_key["long-none"]["baseline"] is None  # the reference of the long case
    assert any('report_to="none" | 1 |  |' in line and "reference" in line for line in lines)
    assert "1.00, 2.00, 3.00 at the start, 4.00, 5.00, 6.00 at the end" in table
    assert table.endswith("Command: `python benchmarks/run.py --long`")


def test_processes_left_behind_are_seen_and_waited_for():
    # a run whose child outlives it, as a delivery process finishing after train() does
    orphan = (
        "import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
        "'import time; time.sleep(1.5)'], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)"
    )
    with as_user.subreaper() as reaping:
        if not reaping:
            pytest.skip("no child subreaper on this platform")
        run_child([sys.executable, "-c", orphan])
        left = as_user.run_tree(None, as_user._ppids())
        assert len(left) == 1 and left[0] != os.getpid()
        samples, names = [], {}
        stopped, _ = as_user._drain(samples, names, sample_every=0.05)
        assert stopped == [] and as_user.run_tree(None, as_user._ppids()) == []
        assert samples and "time.sleep(1.5)" in names[left[0]]
