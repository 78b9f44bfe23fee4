"""Checks that the benchmark measures what it claims: ``pytest benchmarks``."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import run
import startup
from contenders import (
    SLOW_TRACKER_DELAY,
    TASKS,
    Window,
    build_contenders,
    plain_model,
    run_trackmux,
    settle,
    trackmux_model,
)

from trackmux import Tracker, Trainer, TrainerCallback, TrainingArguments
from trackmux.plugins import PluginRegistry
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
    class SlowStart(Tracker):
        name = "slow-start"
        started = False

        def start(self, run):
            time.sleep(0.3)
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
    chosen, skipped = build_contenders(_registry())
    assert [c.name for c in chosen] == ["plain", "trackmux-none", "trackmux-jsonl", "slow-tracker"]
    reasons = dict(skipped)
    assert reasons["trackmux-jsonl+tensorboard"] == "not available: tensorboard"
    assert "mlflow" in reasons["trackmux-jsonl+tensorboard+mlflow+dvclive"]
    assert reasons["trackmux-all"] == "same trackers as trackmux-jsonl"


def test_contenders_with_backends():
    chosen, skipped = build_contenders(_registry("tensorboard", "mlflow", "dvclive", "wandb"))
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
    chosen, skipped = build_contenders(_registry("mlflow"), extra=[["mlflow"], ["dvclive"]])
    mlflow = next(c for c in chosen if c.name == "trackmux-mlflow")
    assert mlflow.report_to == ["mlflow"] and mlflow.trackers == {"mlflow"}
    assert ("trackmux-dvclive", "not available: dvclive") in skipped
    assert chosen[-1].name == "slow-tracker"


def test_all_is_skipped_when_it_adds_nothing():
    chosen, skipped = build_contenders(_registry("tensorboard"))
    assert "trackmux-all" not in [c.name for c in chosen]
    assert ("trackmux-all", "same trackers as trackmux-jsonl+tensorboard") in skipped


def test_run_writes_results(tmp_path, capsys):
    out = tmp_path / "out"
    code = run.main(
        ["--quick", "--models", "tiny", "--steps", "20", "--repeats", "2", "--no-startup"]
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
    assert "import trackmux" in startup.format_report(result)


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
