"""Checkpoints: what a checkpoint holds, TrainerState's JSON, rotation, the best model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from helpers_trainer import make_trainer, scripted_metric
from trackmux import TrainerState
from trackmux.trainer_state import STATE_FILE_NAME

CHECKPOINT_FILES = {
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",  # transformers' name for a single process
    "trackmux_state.json",
    "trainer_state.json",
}


def checkpoint_names(directory) -> list[str]:
    found = [p.name for p in directory.iterdir() if p.name.startswith("checkpoint-")]
    return sorted(found, key=lambda name: int(name.split("-")[1]))


def test_checkpoint_holds_everything_a_resume_needs(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    trainer.train()
    assert checkpoint_names(tmp_path) == ["checkpoint-2", "checkpoint-4"]
    last = tmp_path / "checkpoint-4"
    assert {p.name for p in last.iterdir()} >= CHECKPOINT_FILES

    weights = load_file(str(last / "model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(weights[name], tensor), name
    optimizer = torch.load(last / "optimizer.pt", weights_only=True)
    assert optimizer["state"][0]["step"] == 4
    scheduler = torch.load(last / "scheduler.pt", weights_only=True)
    assert scheduler["last_epoch"] == 4

    saved = TrainerState.load_from_json(last / STATE_FILE_NAME)
    assert saved.global_step == 4 and saved.max_steps == 4 and saved.save_steps == 2
    # the state is written before the train summary is logged
    assert saved.log_history == trainer.state.log_history[:-1]


def test_trainer_state_round_trips_through_json(tmp_path):
    state = TrainerState(
        epoch=1.5,
        global_step=12,
        max_steps=20,
        logging_steps=2,
        eval_steps=4,
        save_steps=4,
        train_batch_size=8,
        num_train_epochs=3,
        total_flos=1.25e9,
        log_history=[{"loss": 0.1234567890123, "step": 2}, {"eval_loss": float("inf"), "step": 4}],
        best_metric=0.0625,
        best_global_step=8,
        best_model_checkpoint=str(tmp_path / "checkpoint-8"),
        is_world_process_zero=False,
        trial_params={"lr": 0.001},
        stateful_callbacks={"EarlyStoppingCallback": {"args": {}, "attributes": {"n": 1}}},
        run_name="run-1",
        tracker_runs={"mlflow": {"run_id": "abc"}},
    )
    path = tmp_path / STATE_FILE_NAME
    state.save_to_json(path)
    assert TrainerState.load_from_json(path) == state
    assert json.loads(path.read_text())["global_step"] == 12


def test_trainer_state_ignores_unknown_keys(tmp_path):
    path = tmp_path / STATE_FILE_NAME
    TrainerState(global_step=3, best_metric=0.5).save_to_json(path)
    data = json.loads(path.read_text())
    data["a_field_from_a_newer_version"] = {"x": 1}
    path.write_text(json.dumps(data))
    loaded = TrainerState.load_from_json(path)
    assert loaded.global_step == 3 and loaded.best_metric == 0.5
    assert not hasattr(loaded, "a_field_from_a_newer_version")


def test_save_total_limit_keeps_the_newest(tmp_path):
    trainer = make_trainer(
        tmp_path, max_steps=5, save_strategy="steps", save_steps=1, save_total_limit=2
    )
    trainer.train()
    assert checkpoint_names(tmp_path) == ["checkpoint-4", "checkpoint-5"]


# step 2 is the best (greater is better)
BEST_AT_TWO = {1: 1.0, 2: 5.0, 3: 2.0, 4: 3.0, 5: 1.0}


def best_model_trainer(tmp_path, scores, **overrides):
    compute_metrics, box = scripted_metric(scores)
    arguments = {
        "max_steps": 5,
        "eval_strategy": "steps",
        "eval_steps": 1,
        "save_strategy": "steps",
        "save_steps": 1,
        "metric_for_best_model": "score",
        "load_best_model_at_end": True,
        **overrides,
    }
    trainer = make_trainer(
        tmp_path, trainer_kwargs={"compute_metrics": compute_metrics}, **arguments
    )
    box.append(trainer)
    return trainer


@pytest.mark.parametrize("limit", [1, 2])
def test_rotation_keeps_the_best_checkpoint(tmp_path, limit):
    trainer = best_model_trainer(tmp_path, BEST_AT_TWO, save_total_limit=limit)
    trainer.train()
    # with a limit of 1 the newest is kept too, to resume from
    assert checkpoint_names(tmp_path) == ["checkpoint-2", "checkpoint-5"]
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-2")
    assert trainer.state.best_metric == 5.0 and trainer.state.best_global_step == 2


def test_load_best_model_at_end_restores_the_best_weights(tmp_path):
    trainer = best_model_trainer(tmp_path, BEST_AT_TWO)
    trainer.train()
    best = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    last = load_file(str(tmp_path / "checkpoint-5" / "model.safetensors"))
    final = trainer.model.state_dict()
    for name, tensor in final.items():
        assert torch.equal(tensor, best[name]), name
    assert any(not torch.equal(final[name], last[name]) for name in final)


def test_without_load_best_the_last_weights_stay(tmp_path):
    trainer = best_model_trainer(tmp_path, BEST_AT_TWO, load_best_model_at_end=False)
    trainer.train()
    last = load_file(str(tmp_path / "checkpoint-5" / "model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, last[name]), name


def test_save_strategy_best_saves_only_improvements(tmp_path):
    scores = {1: 1.0, 2: 0.5, 3: 2.0, 4: 2.0, 5: 3.0}
    trainer = best_model_trainer(
        tmp_path, scores, save_strategy="best", load_best_model_at_end=False
    )
    trainer.train()
    assert checkpoint_names(tmp_path) == ["checkpoint-1", "checkpoint-3", "checkpoint-5"]
    assert trainer.state.best_model_checkpoint == str(tmp_path / "checkpoint-5")


def test_save_model_writes_loadable_weights(tmp_path):
    trainer = make_trainer(tmp_path / "out", max_steps=2)
    trainer.train()
    directory = trainer.save_model(str(tmp_path / "final"))
    weights = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert directory == str(tmp_path / "final")
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(weights[name], tensor), name


def test_the_last_checkpoint_is_the_newest_complete_one(tmp_path):
    from trackmux.trainer_utils import get_last_checkpoint

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-6").mkdir()  # killed while saving: no trainer_state.json yet
    assert get_last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    assert get_last_checkpoint(tmp_path / "nothing-here") is None
