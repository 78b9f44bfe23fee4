"""Issue 15, rows 8-11: the run journal survives write errors (a full disk), checkpoints are
atomic and a damaged one is passed over, a NaN/inf loss is reported and can stop training,
and strict mode's log line says what happens.

Write errors are injected (an ``OSError(ENOSPC)`` from the journal file's ``write``), not
produced with a real tmpfs: as root, permissions would not stop a write."""

from __future__ import annotations

import errno
import json
import logging
import math

import pytest
from reliability_helpers import Recorder, make_trainer

from trackmux import JournalError, NonFiniteLossError, Trainer, TrainerCallback
from trackmux.runlog import find_runs, read_run
from trackmux.trackers import jsonl
from trackmux.trainer_utils import get_last_checkpoint, sorted_checkpoints


class FullDisk:
    """Stands in for the journal's file object: ``write`` fails with ENOSPC while ``full``."""

    def __init__(self, file):
        self.file = file
        self.full = False
        self.refused = 0

    def write(self, data):
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


class FillDisk(TrainerCallback):
    """Makes the journal's disk full after step ``full_at`` and frees it after ``free_at``."""

    def __init__(self, full_at: int, free_at: int | None):
        self.full_at, self.free_at = full_at, free_at
        self.disk: FullDisk | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        tracker = next(t for t in self.trainer.trackers.trackers if t.name == "jsonl")
        self.disk = FullDisk(tracker._file)
        tracker._file = self.disk

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.full_at:
            self.disk.full = True
        if self.free_at is not None and state.global_step == self.free_at:
            self.disk.full = False


def _train_with_full_disk(tmp_path, full_at, free_at, tracker_config=None, **overrides):
    fill = FillDisk(full_at, free_at)
    trainer = make_trainer(tmp_path, callbacks=[fill], max_steps=20, **overrides)
    trainer.tracker_config = dict(tracker_config or {})
    fill.trainer = trainer
    return trainer, fill


def _journal(tmp_path):
    return read_run(find_runs(tmp_path)[-1])


def _messages(caplog, level=logging.WARNING):
    return [r.getMessage() for r in caplog.records if r.levelno >= level]


# -- row 8: the journal is never silently disabled ------------------------------------------


def test_journal_write_errors_are_retried_and_nothing_is_lost(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(jsonl, "WARN_EVERY", math.inf)  # the minute never passes in a test
    trainer, fill = _train_with_full_disk(tmp_path, full_at=3, free_at=12)
    trainer.train()

    assert trainer.state.global_step == 20
    assert fill.disk.refused > 0
    run = _journal(tmp_path)
    assert run.status == "success"
    assert [step for step, _ in run.metrics["train/loss"]] == list(range(1, 21))
    assert not any(r["type"] == "dropped" for r in run.records)
    messages = _messages(caplog)
    assert not any("disabled" in m for m in messages), messages
    cannot = [m for m in messages if "cannot be written" in m]
    assert len(cannot) == 1, messages  # warned once (at most once a minute), with the count
    assert "record(s) wait in memory" in cannot[0] and "No space left" in cannot[0]
    assert any("can be written again" in m for m in messages)


def test_a_full_buffer_drops_and_the_journal_says_how_many(tmp_path, caplog):
    trainer, fill = _train_with_full_disk(
        tmp_path, full_at=3, free_at=15, tracker_config={"jsonl": {"buffer": 4}}
    )
    trainer.train()

    assert trainer.state.global_step == 20
    run = _journal(tmp_path)
    dropped = [r for r in run.records if r["type"] == "dropped"]
    assert len(dropped) == 1
    count = dropped[0]["records"]
    steps = [step for step, _ in run.metrics["train/loss"]]
    assert count > 0 and len(steps) == 20 - count
    assert steps[-5:] == [16, 17, 18, 19, 20]
    finish = [r for r in run.records if r["type"] == "finish"][-1]
    assert finish == {**finish, "status": "success", "dropped": count}
    assert run.delivery["jsonl"]["dropped"] == count
    summary = [m for m in _messages(caplog) if m.startswith("tracker time:")]
    assert summary and f"dropped {count}" in summary[0]


def test_journal_still_unwritable_at_the_end_is_said(tmp_path, caplog):
    trainer, fill = _train_with_full_disk(tmp_path, full_at=5, free_at=None)
    trainer.train()  # training is not stopped by default

    assert trainer.state.global_step == 20
    messages = _messages(caplog)
    assert any("could not be written at the end" in m for m in messages), messages
    assert not any("disabled" in m for m in messages)


def test_journal_errors_stop_stops_training(tmp_path):
    trainer, fill = _train_with_full_disk(tmp_path, full_at=3, free_at=None, journal_errors="stop")
    with pytest.raises(JournalError, match="journal_errors='stop'") as raised:
        trainer.train()
    assert isinstance(raised.value.__cause__, OSError)
    assert trainer.state.global_step < 20


def test_journal_errors_is_validated():
    from trackmux import TrainingArguments

    with pytest.raises(ValueError, match="journal_errors"):
        TrainingArguments(journal_errors="ignore")


# -- row 9: atomic checkpoints; a damaged one is passed over ----------------------------------


def _train_with_checkpoints(tmp_path, **overrides):
    trainer = make_trainer(
        tmp_path, report_to="none", save_strategy="steps", save_steps=2, **overrides
    )
    trainer.train()
    return trainer


DAMAGE = {"empty": "", "truncated": '{"global_step": 6, "log_hist', "not an object": "[1, 2]"}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_state_file_is_skipped_for_the_previous_checkpoint(tmp_path, caplog, damage):
    _train_with_checkpoints(tmp_path)
    newest = tmp_path / "checkpoint-6"
    (newest / "trainer_state.json").write_text(DAMAGE[damage])

    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert any("skipping checkpoint" in m and "checkpoint-6" in m for m in _messages(caplog))

    resumed = make_trainer(
        tmp_path, report_to="none", save_strategy="no", max_steps=8, logging_steps=1
    )
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8
    # steps 1-4 come from checkpoint-4's history, 5-8 were trained again after it
    steps = [entry["step"] for entry in resumed.state.log_history if "loss" in entry]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def test_an_explicit_damaged_checkpoint_fails_clearly(tmp_path):
    _train_with_checkpoints(tmp_path)
    (tmp_path / "checkpoint-6" / "trainer_state.json").write_text("")
    trainer = make_trainer(tmp_path, report_to="none", max_steps=8)
    with pytest.raises(ValueError, match="is not valid JSON"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))


def test_a_save_cut_short_leaves_no_checkpoint_to_resume(tmp_path, monkeypatch):
    import torch

    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, path, *args, **kwargs):
        if str(path).endswith("optimizer.pt") and "checkpoint-4" in str(path):
            calls["n"] += 1
            real_save(obj, path, *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")  # a crash mid-save
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        _train_with_checkpoints(tmp_path)
    assert calls["n"] == 1
    assert not (tmp_path / "checkpoint-4").exists()  # only its temporary directory
    assert (tmp_path / "checkpoint-4.tmp").is_dir()
    assert sorted_checkpoints(tmp_path) == [str(tmp_path / "checkpoint-2")]
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")

    monkeypatch.setattr(torch, "save", real_save)
    resumed = make_trainer(tmp_path, report_to="none", save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 6
    assert sorted_checkpoints(tmp_path) == [str(tmp_path / f"checkpoint-{n}") for n in (2, 4, 6)]
    with open(tmp_path / "checkpoint-4" / "trainer_state.json") as handle:
        assert json.load(handle)["global_step"] == 4


def test_saving_the_same_step_again_replaces_the_checkpoint(tmp_path):
    trainer = _train_with_checkpoints(tmp_path)
    trainer._save_checkpoint()  # step 6 again: renamed over the old one
    assert sorted_checkpoints(tmp_path) == [str(tmp_path / f"checkpoint-{n}") for n in (2, 4, 6)]
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")


# -- row 10: NaN/inf loss ---------------------------------------------------------------------


class NanAfter(Trainer):
    """The loss is NaN from step ``bad_from`` on (a diverged run)."""

    bad_from = 4

    def compute_loss(self, model, inputs, return_outputs=False):
        loss = super().compute_loss(model, inputs, return_outputs)
        if self.state.global_step + 1 >= self.bad_from:
            loss = loss * float("nan")
        return loss


def test_a_nan_loss_is_reported_once_with_its_step_and_counted(tmp_path, caplog):
    trainer = make_trainer(tmp_path, trainer_class=NanAfter, max_steps=8)
    output = trainer.train()

    assert trainer.state.global_step == 8
    nan = [m for m in _messages(caplog) if "training loss is NaN or infinite" in m]
    assert len(nan) == 1, _messages(caplog)
    assert "at step 4" in nan[0]
    assert output.metrics["train_nonfinite_loss_steps"] == 5
    run = _journal(tmp_path)
    assert [v for k, v in run.summary.items() if "nonfinite_loss_steps" in k] == [5]


def test_a_finite_run_has_no_nonfinite_count(tmp_path):
    output = make_trainer(tmp_path, max_steps=3).train()
    assert "train_nonfinite_loss_steps" not in output.metrics


def test_stop_on_nonfinite_loss_stops_before_the_step_is_applied(tmp_path):
    trainer = make_trainer(
        tmp_path, trainer_class=NanAfter, max_steps=8, stop_on_nonfinite_loss=True
    )
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        trainer.train()
    assert trainer.state.global_step == 3
    assert all(bool(p.isfinite().all()) for p in trainer.model.parameters())
    assert _journal(tmp_path).status == "failed"


# -- row 11: strict mode says what happens ----------------------------------------------------


class Flaky(Recorder):
    name = "flaky"


def test_strict_mode_log_line_says_training_stops(tmp_path, caplog):
    trainer = make_trainer(tmp_path, [Flaky(fails_in=("log_metrics",))], tracker_strict=True)
    with pytest.raises(Exception, match="'flaky' failed"):
        trainer.train()
    failed = [m for m in _messages(caplog, logging.ERROR) if "'flaky' failed in" in m]
    assert failed, _messages(caplog)
    assert "training stops with TrackerError" in failed[0]
    assert not any("training goes on" in m for m in _messages(caplog, logging.ERROR))


class SyncFlaky(Flaky):
    synchronous = True


def test_a_disabled_tracker_is_said_disabled_once(tmp_path, caplog):
    trainer = make_trainer(tmp_path, [SyncFlaky(fails_in=("log_metrics", "log_summary", "finish"))])
    trainer.train()
    disabled = [m for m in _messages(caplog, logging.ERROR) if "is disabled" in m]
    assert len(disabled) == 1, disabled
