"""The trackmux command: demo, show, plugins (plugins' listing is in test_plugins.py)."""

import sys

import trackmux.demo
from trackmux import TrainerCallback
from trackmux.cli import main
from trackmux.runlog import find_runs, read_run
from trackmux.testing import run_child


def steps_not_seconds(monkeypatch, steps: int = 100) -> None:
    """The demo trains for about N seconds: how far it gets depends on how busy the machine
    is. A fixed number of steps instead, where the test asserts what training did."""
    monkeypatch.setattr(trackmux.demo, "_estimated_steps", lambda *arguments, **options: steps)
    monkeypatch.setattr(trackmux.demo, "_time_limit_callback", lambda seconds: TrainerCallback())


def test_demo_trains_and_says_where_the_data_is(tmp_path, capsys, monkeypatch):
    steps_not_seconds(monkeypatch)
    assert (
        main(["demo", "--output-dir", str(tmp_path), "--seconds", "2", "--report-to", "jsonl"]) == 0
    )
    out = capsys.readouterr().out
    runs = find_runs(tmp_path)
    assert len(runs) == 1
    run = read_run(runs[0])
    assert run.statuses == ["success", "success"]  # train, then the final evaluate
    assert run.history("train/loss")[-1][1] < run.history("train/loss")[0][1]
    assert f"jsonl        {runs[0]}/events.jsonl" in out
    assert "trained " in out and "eval loss" in out


def test_demo_with_no_tracker(tmp_path, capsys):
    assert (
        main(["demo", "--output-dir", str(tmp_path), "--seconds", "1", "--report-to", "none"]) == 0
    )
    assert "no tracker" in capsys.readouterr().out
    assert find_runs(tmp_path) == []


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
