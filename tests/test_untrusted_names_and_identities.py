"""Issue 15, rows 1, 2 and 7: a checkpoint's tracker identities and a run name are data,
never instructions. Nothing is written outside output_dir; a refused identity opens a new
run with a warning naming the tracker and what was refused."""

from __future__ import annotations

import logging
import os

import pytest

from helpers_trainer import make_trainer
from trackmux import start_run
from trackmux.runlog import read_run
from trackmux.testing import replace_tracker_identity
from trackmux.tracker import run_dir_name


def _files(root) -> set[str]:
    return {
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    }


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "..", ".", "a\0b", "tab\there", "x" * 300])
def test_run_name_never_leaves_output_dir(tmp_path, name):
    out = tmp_path / "a" / "b" / "out"
    trainer = make_trainer(out, report_to=["jsonl"], run_name=name, num_train_epochs=1)
    trainer.train()
    assert _files(tmp_path) == {os.path.relpath(p, tmp_path) for p in _all_under(out)}
    runs = os.listdir(out / "runs")
    assert len(runs) == 1 and runs[0] == run_dir_name(name)
    log = read_run(out / "runs" / runs[0])
    assert log.status == "success" and log.metrics


def _all_under(root):
    return [os.path.join(folder, f) for folder, _, files in os.walk(root) for f in files]


def test_run_dir_name_is_one_safe_stable_component():
    for name in ["../../x", "/tmp/abs", "..", "a/b", "a\\b", "\0", "\x1b[31m", "é" * 300, " "]:
        clean = run_dir_name(name)
        assert clean not in ("", ".", "..") and "/" not in clean and "\\" not in clean
        assert not clean.startswith(".") and all(ord(c) >= 32 for c in clean)
        assert len(clean.encode()) <= 210 and clean == run_dir_name(name)
    assert run_dir_name("bert-lr-1e-5") == "bert-lr-1e-5"  # a plain name is kept
    assert run_dir_name("bert/lr") != run_dir_name("bert_lr")  # a changed name gets a hash
    assert run_dir_name("x" * 300) != run_dir_name("x" * 301)


@pytest.mark.parametrize("where", ["../../elsewhere", "ABSOLUTE"])
def test_jsonl_identity_outside_output_dir_is_refused(tmp_path, caplog, where):
    out = tmp_path / "a" / "b" / "out"
    elsewhere = tmp_path / "elsewhere"
    where = str(elsewhere) if where == "ABSOLUTE" else where
    with (
        caplog.at_level(logging.WARNING, logger="trackmux"),
        start_run(
            report_to=["jsonl"], output_dir=str(out), run_name="r", resume={"jsonl": {"run": where}}
        ) as run,
    ):
        run.log({"loss": 1.0}, step=1)
    assert not elsewhere.exists()
    assert os.listdir(out / "runs") == ["r"]
    assert read_run(out / "runs" / "r").status == "success"
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "'jsonl'" in refused[0] and "run" in refused[0]
    assert run.identities["jsonl"] == {"run": "r"}  # stored relative to the runs directory


def test_checkpoint_with_escaping_jsonl_identity_resumes_into_a_new_run(tmp_path, caplog):
    out = tmp_path / "a" / "b" / "out"
    make_trainer(
        out, report_to=["jsonl"], run_name="r", save_strategy="steps", save_steps=2, max_steps=4
    ).train()
    checkpoint = out / "checkpoint-2"
    stored = replace_tracker_identity(checkpoint, "jsonl", {"run": "../../elsewhere"})
    assert stored == {"run": "r"}  # relative, as stored
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        make_trainer(
            out, report_to=["jsonl"], run_name="r", save_strategy="steps", save_steps=2, max_steps=4
        ).train(resume_from_checkpoint=str(checkpoint))
    assert not (tmp_path / "elsewhere").exists() and not (out.parent / "elsewhere").exists()
    assert any("'jsonl'" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    assert sorted(os.listdir(out / "runs")) == ["r", "r-2"]
    assert read_run(out / "runs" / "r-2").status == "success"


def test_identity_inside_output_dir_still_resumes(tmp_path, caplog):
    out = tmp_path / "out"
    with start_run(report_to=["jsonl"], output_dir=str(out), run_name="r") as run:
        run.log({"loss": 1.0}, step=1)
    with (
        caplog.at_level(logging.WARNING, logger="trackmux"),
        start_run(
            report_to=["jsonl"], output_dir=str(out), run_name="r", resume=run.identities, step=2
        ) as again,
    ):
        again.log({"loss": 0.5}, step=2)
    assert not [r for r in caplog.records if "refused" in r.getMessage()]
    assert os.listdir(out / "runs") == ["r"]
