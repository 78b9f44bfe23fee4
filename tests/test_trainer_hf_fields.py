"""transformers' TrainingArguments fields that change what trackmux's Trainer does: each one
has its effect on the loop (tests/frameworks/test_transformers_args.py compares the field
set, the schedules and the optimizers with transformers itself)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from helpers_trainer import Recorder, make_trainer
from trackmux import Trainer
from trackmux.trainer_compat import dataloader_options, ddp_options, metrics_format
from trackmux.training_args import TrainingArguments


def _evaluated_at(trainer) -> list[int]:
    return [e["step"] for e in trainer.state.log_history if "eval_loss" in e]


def test_eval_delay_skips_evaluations_before_it(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6, eval_strategy="steps", eval_steps=1, eval_delay=4)
    trainer.train()
    assert _evaluated_at(trainer) == [4, 5, 6]


def test_eval_delay_counts_epochs_with_the_epoch_strategy(tmp_path):
    trainer = make_trainer(tmp_path, num_train_epochs=3, eval_strategy="epoch", eval_delay=2)
    trainer.train()
    assert _evaluated_at(trainer) == [8, 12]  # 4 steps per epoch: epochs 2 and 3


def test_eval_on_start_evaluates_before_the_first_step(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(
        tmp_path,
        max_steps=2,
        eval_on_start=True,
        trainer_kwargs={"callbacks": [recorder]},
    )
    trainer.train()
    assert _evaluated_at(trainer) == [0]
    events = [event for event, _ in recorder.events]
    assert events.index("on_evaluate") < events.index("on_step_begin")


def test_save_only_model_writes_the_model_only_and_cannot_be_resumed(tmp_path):
    trainer = make_trainer(
        tmp_path, max_steps=2, save_strategy="steps", save_steps=2, save_only_model=True
    )
    trainer.train()
    checkpoint = tmp_path / "checkpoint-2"
    files = sorted(os.listdir(checkpoint))
    assert "model.safetensors" in files and "trainer_state.json" in files
    assert not [f for f in files if f.startswith(("optimizer", "scheduler", "rng_state"))]
    again = make_trainer(tmp_path, max_steps=4, save_strategy="no")
    with pytest.raises(ValueError, match="save_only_model=True"):
        again.train(resume_from_checkpoint=str(checkpoint))


def test_dataloader_drop_last_drops_the_short_batch(tmp_path):
    trainer = make_trainer(tmp_path, train_size=10, num_train_epochs=1, dataloader_drop_last=True)
    trainer.train()
    assert trainer.state.global_step == 2  # 10 samples, batches of 4: the last 2 are dropped
    kept = make_trainer(tmp_path / "kept", train_size=10, num_train_epochs=1)
    kept.train()
    assert kept.state.global_step == 3


def test_dataloader_options_follow_the_fields():
    args = TrainingArguments(
        dataloader_num_workers=2,
        dataloader_prefetch_factor=3,
        dataloader_persistent_workers=True,
        dataloader_multiprocessing_context="spawn",
        dataloader_in_order=False,
        dataloader_drop_last=True,
    )
    options = dataloader_options(args, torch.device("cpu"), [1, 2, 3])
    assert options == {
        "num_workers": 2,
        "pin_memory": False,  # pinned memory only helps a GPU
        "persistent_workers": True,
        "in_order": False,
        "multiprocessing_context": "spawn",
        "drop_last": True,
        "prefetch_factor": 3,
    }
    assert dataloader_options(args, torch.device("cuda"), [1])["pin_memory"] is True
    assert TrainingArguments(use_cpu=True).dataloader_pin_memory is False  # as transformers


def test_prefetch_factor_without_workers_is_refused():
    with pytest.raises(ValueError, match="dataloader_prefetch_factor=2 needs worker processes"):
        TrainingArguments(dataloader_prefetch_factor=2)


def test_ddp_options_pass_only_what_is_set():
    assert ddp_options(TrainingArguments()) == {}
    args = TrainingArguments(ddp_find_unused_parameters=True, ddp_bucket_cap_mb=10)
    assert ddp_options(args) == {"find_unused_parameters": True, "bucket_cap_mb": 10}


class NanAt(Trainer):
    bad_step = 3

    def compute_loss(self, model, inputs, return_outputs=False):
        loss = super().compute_loss(model, inputs, return_outputs)
        if self.state.global_step + 1 == self.bad_step:
            return loss * float("nan")
        return loss


@pytest.mark.parametrize("filtered", [True, False])
def test_logging_nan_inf_filter_replaces_a_nan_step_by_the_window_mean(tmp_path, filtered):
    trainer = make_trainer(
        tmp_path,
        trainer_class=NanAt,
        max_steps=4,
        logging_steps=4,
        max_grad_norm=None,
        logging_nan_inf_filter=filtered,
    )
    trainer.train()
    (logged,) = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert math.isfinite(logged) is filtered


class Checkpointed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 1)
        self.enabled_with = None

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.enabled_with = gradient_checkpointing_kwargs

    def forward(self, x, labels=None):
        return {"loss": torch.nn.functional.mse_loss(self.net(x), labels)}


def test_gradient_checkpointing_calls_the_models_switch(tmp_path):
    model = Checkpointed()
    make_trainer(
        tmp_path,
        model=model,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )
    assert model.enabled_with == {"use_reentrant": False}


def test_gradient_checkpointing_on_a_model_without_it_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="gradient_checkpointing_enable"):
        make_trainer(tmp_path, gradient_checkpointing=True)


def test_torch_compile_wraps_the_trained_model(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, torch_compile_backend="eager")
    assert trainer.args.torch_compile is True  # setting the backend turns it on, as in HF
    trainer.train()
    assert hasattr(trainer.model_wrapped, "_orig_mod")
    assert trainer.model_wrapped._orig_mod is trainer.model


def test_tf32_without_a_tf32_gpu_is_refused(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="tf32=True needs an Ampere"):
        make_trainer(tmp_path, tf32=True)


def test_sgd_with_optim_args(tmp_path):
    trainer = make_trainer(tmp_path, optim="sgd", optim_args="momentum=0.9, nesterov=True")
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"] is True
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.0, 0.0]


def test_reduce_lr_on_plateau_steps_after_each_evaluation(tmp_path):
    trainer = make_trainer(
        tmp_path,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        lr_scheduler_type="reduce_lr_on_plateau",
        # mode "max" with a huge threshold: the first evaluation sets the best, each later one
        # is "worse" and halves the rate
        lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "mode": "max", "threshold": 1e9},
    )
    trainer.train()
    assert _evaluated_at(trainer) == [2, 4, 6]
    assert trainer.get_learning_rates() == pytest.approx([0.01 / 4, 0.01 / 4])


def test_counting_helpers(tmp_path, capsys):
    trainer = make_trainer(tmp_path)
    assert trainer.num_examples(trainer.get_train_dataloader()) == 16
    assert trainer.get_total_train_batch_size(trainer.args) == 4
    assert trainer.is_world_process_zero() and trainer.is_local_process_zero()
    trainer.log_metrics("eval", {"eval_loss": 0.123456, "eval_runtime": 61.5})
    assert capsys.readouterr().out.splitlines() == [
        "***** eval metrics *****",
        "  eval_loss    =     0.1235",
        "  eval_runtime = 0:01:01.50",
    ]
    assert metrics_format({"total_flos": 2**31}) == {"total_flos": "2GF"}
