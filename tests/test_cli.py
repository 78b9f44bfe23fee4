"""The trackmux command: demo, show, plugins (plugins' listing is in test_plugins.py)."""

import sys

import trackmux.demo
from trackmux.cli import main
from trackmux.runlog import find_runs, read_run
from trackmux.testing import run_child


def steps_not_seconds(monkeypatch, steps: int = 100) -> None:
    """The demo plans its steps from a timed warm-up: how many depends on how busy the
    machine is. A fixed number of steps instead, where the test asserts what training did."""
    monkeypatch.setattr(trackmux.demo, "measure", lambda *arguments, **options: (0.01, 0.1))
    monkeypatch.setattr(trackmux.demo, "plan", lambda *arguments, **options: steps)


def test_demo_trains_evaluates_checkpoints_and_says_where_the_data_is(
    tmp_path, capsys, monkeypatch
):
    steps_not_seconds(monkeypatch)
    assert (
        main(["demo", "--output-dir", str(tmp_path), "--seconds", "2", "--report-to", "jsonl"]) == 0
    )
    out = capsys.readouterr().out
    runs = find_runs(tmp_path)
    assert len(runs) == 1
    run = read_run(runs[0])
    assert run.statuses == ["success"]
    assert run.history("train/loss")[-1][1] < run.history("train/loss")[0][1]
    # evaluations during the run, the last at the last step; checkpoints kept as planned
    assert [step for step, _ in run.history("eval/loss")] == [20, 40, 60, 80, 100]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [
        "checkpoint-100",
        "checkpoint-50",
    ]
    assert f"jsonl        {runs[0]}/events.jsonl" in out
    assert "trained 100 steps in " in out
    assert "train loss " in out and "(the mean over the whole run" in out
    assert "eval loss " in out and "(the model at the end" in out


def test_demo_plans_from_a_real_warm_up_of_its_trainer():
    train_data, eval_data = trackmux.demo._data()
    per_step, evaluation = trackmux.demo.measure(train_data, eval_data, steps=12)
    assert per_step > 0 and evaluation > 0
    assert trackmux.demo.plan(30.0, per_step=0.01, evaluation=0.2) == int((30 / 1.15 - 1.2) / 0.01)
    assert trackmux.demo.plan(1.0, per_step=1.0, evaluation=1.0) == 50  # never fewer


def test_demo_with_no_tracker_keeps_the_run_journal(tmp_path, capsys, monkeypatch):
    steps_not_seconds(monkeypatch, steps=50)
    assert (
        main(["demo", "--output-dir", str(tmp_path), "--seconds", "1", "--report-to", "none"]) == 0
    )
    out = capsys.readouterr().out
    assert "starting the trackers" not in out  # the journal needs no waiting
    assert len(find_runs(tmp_path)) == 1 and "  jsonl " in out


def test_show_summarises_a_run(tmp_path, capsys, monkeypatch):
    steps_not_seconds(monkeypatch)  # a loss logged before the time is up, however slow
    main(["demo", "--output-dir", str(tmp_path), "--seconds", "1", "--report-to", "jsonl"])
    capsys.readouterr()
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "status: success" in out
    assert "train/loss: last" in out and "eval/loss: last" in out


def test_show_without_a_run_fails_clearly(tmp_path, capsys):
    assert main(["show", str(tmp_path)]) == 1
    assert "no run log" in capsys.readouterr().err


def test_console_script_and_module_agree():
    version = run_child([sys.executable, "-m", "trackmux", "--version"])
    assert version.stdout.strip().startswith("trackmux 0.1")
