"""EarlyStoppingCallback: when it stops, its threshold, its errors, and its patience across a
resume."""

from __future__ import annotations

import json

import pytest

from helpers_trainer import RaiseAt, make_trainer, scripted_metric
from trackmux import EarlyStoppingCallback


def early_stopping_trainer(tmp_path, scores, callback, **overrides):
    compute_metrics, box = scripted_metric(scores)
    arguments = {
        "max_steps": 20,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "metric_for_best_model": "score",
        "greater_is_better": True,
        **overrides,
    }
    trainer = make_trainer(
        tmp_path,
        trainer_kwargs={"callbacks": [callback], "compute_metrics": compute_metrics},
        **arguments,
    )
    box.append(trainer)
    return trainer


def evaluations(trainer) -> list[int]:
    return [entry["step"] for entry in trainer.state.log_history if "eval_score" in entry]


def test_stops_after_patience_evaluations_without_improvement(tmp_path):
    # 1: first value, 2: better, 3: equal (no improvement), 4: worse -> patience 2 reached
    scores = {1: 1.0, 2: 2.0, 3: 2.0, 4: 1.5, **{s: 9.0 for s in range(5, 21)}}
    callback = EarlyStoppingCallback(early_stopping_patience=2)
    trainer = early_stopping_trainer(tmp_path, scores, callback)
    trainer.train()
    assert trainer.state.global_step == 4
    assert evaluations(trainer) == [1, 2, 3, 4]
    assert callback.early_stopping_patience_counter == 2
    assert trainer.state.best_metric == 2.0 and trainer.state.best_global_step == 2


def test_lower_is_better_with_eval_loss_style_name(tmp_path):
    scores = {1: 3.0, 2: 2.0, 3: 2.5, **{s: 0.0 for s in range(4, 21)}}
    callback = EarlyStoppingCallback(early_stopping_patience=1)
    trainer = early_stopping_trainer(
        tmp_path, scores, callback, metric_for_best_model="eval_score", greater_is_better=False
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert evaluations(trainer) == [1, 2, 3]


@pytest.mark.parametrize("threshold, stop_step", [(0.1, 5), (0.0, 20)])
def test_threshold_counts_small_gains_as_no_improvement(tmp_path, threshold, stop_step):
    # gains: +0.05 (small), +0.15 (large), +0.05, +0.05, then +0.05 every step
    values = [1.0, 1.05, 1.2, 1.25, 1.3]
    scores = {
        step: values[step - 1] if step <= 5 else 1.3 + 0.05 * (step - 5) for step in range(1, 21)
    }
    callback = EarlyStoppingCallback(early_stopping_patience=2, early_stopping_threshold=threshold)
    trainer = early_stopping_trainer(tmp_path, scores, callback)
    trainer.train()
    assert trainer.state.global_step == stop_step
    assert len(evaluations(trainer)) == stop_step


def test_needs_metric_for_best_model(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=3,
        eval_strategy="steps",
        eval_steps=1,
        trainer_kwargs={"callbacks": [EarlyStoppingCallback]},
    )
    assert trainer.args.metric_for_best_model is None
    with pytest.raises(ValueError, match="metric_for_best_model"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_needs_evaluations(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=3,
        eval_strategy="no",
        metric_for_best_model="loss",
        trainer_kwargs={"callbacks": [EarlyStoppingCallback]},
    )
    with pytest.raises(ValueError, match="eval_strategy is 'no'"):
        trainer.train()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"early_stopping_threshold": -0.1}, "early_stopping_threshold"),
    ],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarlyStoppingCallback(**kwargs)


def test_patience_counter_survives_a_resume(tmp_path):
    # step 1 sets the best; every later evaluation is worse: patience 3 ends training at step 4
    scores = {1: 1.0, **{s: 0.5 for s in range(2, 21)}}
    stop = RaiseAt(4, KeyboardInterrupt())
    interrupted = early_stopping_trainer(
        tmp_path,
        scores,
        EarlyStoppingCallback(early_stopping_patience=3),
        save_strategy="steps",
        save_steps=1,
    )
    interrupted.add_callback(stop)
    with pytest.raises(KeyboardInterrupt):
        interrupted.train()
    saved = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["EarlyStoppingCallback"] == {
        "args": {"early_stopping_patience": 3, "early_stopping_threshold": 0.0},
        "attributes": {"early_stopping_patience_counter": 2},
    }

    fresh = EarlyStoppingCallback(early_stopping_patience=3)
    resumed = early_stopping_trainer(tmp_path, scores, fresh, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=True)
    # without the restored counter (2) it would run to step 6
    assert resumed.state.global_step == 4
    assert fresh.early_stopping_patience_counter == 3
    assert evaluations(resumed) == [1, 2, 3, 4]
