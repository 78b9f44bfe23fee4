"""Exact resume: an interrupted run resumed in a new Trainer with a new model logs the very
same losses, step for step, as a run that was never interrupted."""

from __future__ import annotations

import pytest
import torch

from helpers_trainer import RaiseAt, losses_by_step, make_args
from trackmux import Trainer, set_seed
from trackmux.testing.toy import RegressionDataset, TinyRegressor

TRAIN_SIZE = 24  # 6 optimizer steps per epoch: the save at step 10 is in the middle of epoch 2


def run(output_dir, *, accumulation=1, callbacks=(), resume=None, init_seed=0):
    set_seed(init_seed)
    model = TinyRegressor(dropout=0.2)  # dropout: the RNG state must be restored exactly
    args = make_args(
        output_dir,
        max_steps=20,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=10,
    )
    trainer = Trainer(
        model,
        args,
        train_dataset=RegressionDataset(TRAIN_SIZE),
        eval_dataset=RegressionDataset(8, seed=1),
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.parametrize(
    "accumulation, resume",
    [(1, True), (2, True), (1, "path")],
    ids=["last-checkpoint", "accumulation-2", "explicit-path"],
)
def test_resumed_run_logs_the_same_losses(tmp_path, accumulation, resume):
    reference = run(tmp_path / "reference", accumulation=accumulation)
    expected = losses_by_step(reference.state)
    assert sorted(expected) == list(range(1, 21))

    stop = RaiseAt(13, KeyboardInterrupt("interrupted at step 13"))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", accumulation=accumulation, callbacks=[stop])
    assert [type(error) for error in stop.exceptions] == [KeyboardInterrupt]
    assert stop.exceptions[0] is stop.error
    assert sorted(p.name for p in (tmp_path / "cut").glob("checkpoint-*")) == ["checkpoint-10"]

    if resume == "path":
        resume = str(tmp_path / "cut" / "checkpoint-10")
    # another initialisation: only the checkpoint can make the weights right
    resumed = run(tmp_path / "cut", accumulation=accumulation, resume=resume, init_seed=99)
    got = losses_by_step(resumed.state)
    assert {s: got[s] for s in range(11, 21)} == {s: expected[s] for s in range(11, 21)}
    assert got == expected  # steps 1..10 come back from the checkpoint's log history
    assert resumed.state.global_step == 20
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
    evaluated = [e["eval_loss"] for e in resumed.state.log_history if "eval_loss" in e]
    assert evaluated == [e["eval_loss"] for e in reference.state.log_history if "eval_loss" in e]


def test_resume_from_the_arguments(tmp_path):
    reference = run(tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[RaiseAt(13, KeyboardInterrupt())])
    set_seed(99)
    args = make_args(
        tmp_path / "cut",
        max_steps=20,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=5,
        save_strategy="steps",
        save_steps=10,
        resume_from_checkpoint=str(tmp_path / "cut" / "checkpoint-10"),
    )
    trainer = Trainer(
        TinyRegressor(dropout=0.2),
        args,
        train_dataset=RegressionDataset(TRAIN_SIZE),
        eval_dataset=RegressionDataset(8, seed=1),
    )
    trainer.train()
    assert losses_by_step(trainer.state) == losses_by_step(reference.state)


def test_resume_true_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint-<step> directory"):
        run(tmp_path, resume=True)


def test_resume_from_a_directory_that_is_no_checkpoint(tmp_path):
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(ValueError, match="is not a trackmux checkpoint"):
        run(tmp_path / "out", resume=str(tmp_path / "not-a-checkpoint"))


def test_resume_at_the_end_trains_no_more(tmp_path):
    first = run(tmp_path)
    resumed = run(tmp_path, resume=True, init_seed=5)
    assert resumed.state.global_step == 20
    assert losses_by_step(resumed.state) == losses_by_step(first.state)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name
