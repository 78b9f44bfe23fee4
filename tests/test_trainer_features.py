"""Trainer features: what a model may return, collators, subclassing, gradient accumulation
and clipping, learning-rate schedules, evaluate / predict and compute_metrics."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from helpers_trainer import Recorder, losses_by_step, make_args, make_trainer
from trackmux import EvalPrediction, Trainer, set_seed
from trackmux.runlog import read_run
from trackmux.testing.toy import RegressionDataset, TinyRegressor


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def full_batch_loss(model, dataset, loss_function=nn.functional.mse_loss):
    return loss_function(model(dataset.x)["logits"], dataset.y)


# ------------------------------------------------------------------- what forward returns


@dataclass
class ModelOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor


class Returns(nn.Module):
    """Returns its loss in one of the shapes the Trainer accepts (or without a loss)."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind
        self.linear = nn.Linear(8, 1)

    def forward(self, x, labels=None):
        logits = self.linear(x)
        loss = None if labels is None else nn.functional.mse_loss(logits, labels)
        if self.kind == "dict":
            return {"loss": loss, "logits": logits}
        if self.kind == "tuple":
            return (loss, logits)
        if self.kind == "object":
            return ModelOutput(loss, logits)
        if self.kind == "tensor":
            return loss
        return {"logits": logits}  # "none": no loss at all


def train_returning(tmp_path, kind):
    set_seed(0)
    trainer = make_trainer(tmp_path / kind, model=Returns(kind), max_steps=3, logging_steps=1)
    trainer.train()
    return trainer


def test_loss_in_a_dict_a_tuple_an_object_or_a_bare_tensor(tmp_path):
    trainers = {kind: train_returning(tmp_path, kind) for kind in ("dict", "tuple", "object")}
    trainers["tensor"] = train_returning(tmp_path, "tensor")
    reference = losses_by_step(trainers["dict"].state)
    assert sorted(reference) == [1, 2, 3]
    for kind, trainer in trainers.items():
        assert losses_by_step(trainer.state) == reference, kind
        assert trainer.evaluate()["eval_loss"] > 0, kind
    dataset = RegressionDataset(8, seed=1)
    for kind in ("dict", "tuple", "object"):
        predictions = trainers[kind].predict(dataset).predictions
        expected = trainers[kind].model.linear(dataset.x).detach().numpy()
        np.testing.assert_allclose(predictions, expected, rtol=1e-6)
    assert trainers["tensor"].predict(dataset).predictions is None


def test_a_model_without_a_loss_is_a_clear_error(tmp_path):
    trainer = make_trainer(tmp_path, model=Returns("none"), max_steps=1)
    with pytest.raises(ValueError, match="did not return a loss.*compute_loss"):
        trainer.train()


def test_model_is_required():
    with pytest.raises(ValueError, match="model is required"):
        Trainer(None)


def test_train_and_evaluate_need_their_datasets(tmp_path):
    trainer = Trainer(TinyRegressor(), make_args(tmp_path, max_steps=1))
    with pytest.raises(ValueError, match="needs a train_dataset"):
        trainer.train()
    with pytest.raises(ValueError, match="needs an eval_dataset"):
        trainer.evaluate()


# ------------------------------------------------------------------------------ data


def test_custom_data_collator(tmp_path):
    source = RegressionDataset(12)
    samples = list(zip(source.x, source.y))  # (x, y) pairs the model cannot take as they are
    sizes = []

    def collate(batch):
        sizes.append(len(batch))
        return {
            "x": torch.stack([x for x, _ in batch]),
            "labels": torch.stack([y for _, y in batch]),
        }

    trainer = Trainer(
        TinyRegressor(),
        make_args(tmp_path, max_steps=3, logging_steps=1),
        data_collator=collate,
        train_dataset=samples,
        eval_dataset=samples[:6],
    )
    trainer.train()
    assert sizes == [4, 4, 4]
    assert len(losses_by_step(trainer.state)) == 3
    assert "eval_loss" in trainer.evaluate()
    assert sizes[3:] == [4, 2]


def test_tuple_batches_are_passed_positionally(tmp_path):
    source = RegressionDataset(8)
    dataset = torch.utils.data.TensorDataset(source.x, source.y)
    trainer = Trainer(
        TinyRegressor(), make_args(tmp_path, max_steps=2, logging_steps=1), train_dataset=dataset
    )
    trainer.train()
    assert sorted(losses_by_step(trainer.state)) == [1, 2]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        source = RegressionDataset(64)
        for index in range(len(source)):
            yield source[index]


def test_iterable_dataset_needs_max_steps(tmp_path):
    trainer = Trainer(TinyRegressor(), make_args(tmp_path, max_steps=3), train_dataset=Stream())
    assert trainer.train().global_step == 3
    trainer = Trainer(TinyRegressor(), make_args(tmp_path), train_dataset=Stream())
    with pytest.raises(ValueError, match="max_steps must be > 0"):
        trainer.train()


# ------------------------------------------------------------------------- subclassing


def test_overridden_compute_loss_is_what_trains(tmp_path):
    class L1Trainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False):
            outputs = model(inputs["x"])
            loss = nn.functional.l1_loss(outputs["logits"], inputs["labels"])
            return (loss, outputs) if return_outputs else loss

    dataset = RegressionDataset(8)
    set_seed(0)
    model = TinyRegressor()
    initial = copy.deepcopy(model)
    trainer = L1Trainer(
        model,
        make_args(tmp_path, max_steps=1, logging_steps=1, per_device_train_batch_size=8),
        train_dataset=dataset,
    )
    trainer.train()
    expected = full_batch_loss(initial, dataset, nn.functional.l1_loss).item()
    assert losses_by_step(trainer.state)[1] == pytest.approx(expected, rel=1e-6)
    assert expected != pytest.approx(full_batch_loss(initial, dataset).item(), rel=1e-3)


def test_overridden_training_step_and_its_returned_loss(tmp_path):
    calls = []

    class Counting(Trainer):
        def training_step(self, model, inputs, accumulation_steps=1):
            super().training_step(model, inputs, accumulation_steps)
            calls.append((accumulation_steps, len(inputs["x"])))
            return torch.tensor(0.5)  # what the Trainer logs is what training_step returns

    trainer = make_trainer(
        tmp_path,
        trainer_class=Counting,
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
    )
    trainer.train()
    assert calls == [(2, 2)] * 6
    assert losses_by_step(trainer.state) == {1: 1.0, 2: 1.0, 3: 1.0}


# ---------------------------------------------------------------- accumulation and clipping


def one_step(tmp_path, batch_size, accumulation, initial):
    model = copy.deepcopy(initial)
    trainer = Trainer(
        model,
        make_args(
            tmp_path / f"{batch_size}x{accumulation}",
            max_steps=1,
            per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation,
            lr_scheduler_type="constant",
            max_grad_norm=None,
        ),
        train_dataset=RegressionDataset(8),  # one step sees all 8 samples either way
    )
    trainer.train()
    return parameters(model)


def test_gradient_accumulation_equals_one_big_batch(tmp_path):
    set_seed(0)
    initial = TinyRegressor()
    big = one_step(tmp_path, 8, 1, initial)
    accumulated = one_step(tmp_path, 4, 2, initial)
    four = one_step(tmp_path, 2, 4, initial)

    plain = copy.deepcopy(initial)  # the same update written as a plain loop
    optimizer = torch.optim.AdamW(plain.parameters(), lr=0.01, weight_decay=0.0)
    full_batch_loss(plain, RegressionDataset(8)).backward()
    optimizer.step()

    before = parameters(initial)
    for name, value in parameters(plain).items():
        assert not torch.allclose(value, before[name]), name  # the step did move the weights
        torch.testing.assert_close(big[name], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(accumulated[name], value, rtol=0, atol=1e-6)
        torch.testing.assert_close(four[name], value, rtol=0, atol=1e-6)


def gradient_norm(model, dataset) -> float:
    model = copy.deepcopy(model)
    full_batch_loss(model, dataset).backward()
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()])
    ).item()


def sgd_step(tmp_path, max_grad_norm):
    set_seed(0)
    model = TinyRegressor()
    dataset = RegressionDataset(8)
    norm = gradient_norm(model, dataset)
    before = parameters(model)
    trainer = Trainer(
        model,
        make_args(
            tmp_path,
            max_steps=1,
            logging_steps=1,
            per_device_train_batch_size=8,
            lr_scheduler_type="constant",
            max_grad_norm=max_grad_norm,
        ),
        train_dataset=dataset,
        optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None),
    )
    trainer.train()
    moved = torch.linalg.vector_norm(
        torch.cat([(p - before[name]).flatten() for name, p in parameters(model).items()])
    ).item()
    return trainer, norm, moved


def test_gradient_clipping_bounds_the_update_and_logs_the_norm(tmp_path):
    trainer, norm, moved = sgd_step(tmp_path / "clipped", max_grad_norm=0.01)
    assert norm > 1.0  # far above the clipping threshold
    logged = trainer.state.log_history[0]
    assert logged["grad_norm"] == pytest.approx(norm, rel=1e-5)  # the norm before clipping
    assert moved == pytest.approx(0.1 * 0.01, rel=1e-4)  # lr * max_grad_norm

    trainer, norm, moved = sgd_step(tmp_path / "free", max_grad_norm=None)
    # logged without clipping too, as transformers does
    assert trainer.state.log_history[0]["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert moved == pytest.approx(0.1 * norm, rel=1e-4)


# ---------------------------------------------------------------------- learning rates

LR, WARMUP, TOTAL = 1e-3, 3, 10


def expected_lr(kind: str, step: int) -> float:
    """Hugging Face's schedules, written out: ``step`` scheduler steps have been taken."""
    if kind == "constant":  # no warmup, as in Hugging Face
        return LR
    if step < WARMUP:
        return LR * step / WARMUP
    progress = (step - WARMUP) / (TOTAL - WARMUP)
    if kind == "constant_with_warmup":
        return LR
    if kind == "linear":
        return LR * (1 - progress)
    if kind == "cosine":
        return LR * 0.5 * (1 + math.cos(math.pi * progress))
    if kind == "polynomial":  # power 1 down to lr_end=1e-7
        return (LR - 1e-7) * (1 - progress) + 1e-7
    raise AssertionError(f"no formula for {kind}")


# every other type is compared with transformers' own schedules, step by step, in
# tests/frameworks/test_transformers_args.py
@pytest.mark.parametrize(
    "kind", ["linear", "cosine", "constant", "constant_with_warmup", "polynomial"]
)
@pytest.mark.parametrize("warmup", ["steps", "ratio"])
def test_learning_rate_schedules(tmp_path, kind, warmup):
    warmup_args = {"warmup_steps": WARMUP} if warmup == "steps" else {"warmup_ratio": 0.25}
    trainer = make_trainer(
        tmp_path,
        max_steps=TOTAL,
        logging_steps=1,
        learning_rate=LR,
        lr_scheduler_type=kind,
        **warmup_args,
    )
    trainer.train()
    logged = [(e["step"], e["learning_rate"]) for e in trainer.state.log_history if "loss" in e]
    assert [step for step, _ in logged] == list(range(1, TOTAL + 1))
    # as transformers logs it: the rate step s used, after s - 1 scheduler steps
    for step, rate in logged:
        expected = expected_lr(kind, step - 1)
        assert rate == pytest.approx(expected, rel=1e-9, abs=1e-15), (kind, step)
    rates = [rate for _, rate in logged]
    if kind != "constant":
        assert rates[0] < rates[1] < rates[2] < rates[3]  # warmup: step 4 uses the peak
        assert rates[3] == pytest.approx(LR)
    assert all(a >= b for a, b in zip(rates[3:], rates[4:]))  # then never rises


# ---------------------------------------------------------------------- evaluate / predict


def test_evaluate_with_a_metric_key_prefix(tmp_path):
    eval_dataset = RegressionDataset(10, seed=1)  # batches of 4, 4 and 2
    trainer = make_trainer(tmp_path, max_steps=1)
    metrics = trainer.evaluate(eval_dataset, metric_key_prefix="val")
    assert set(metrics) == {
        "val_loss",
        "val_runtime",
        "val_samples_per_second",
        "val_steps_per_second",
        "epoch",
    }
    expected = full_batch_loss(trainer.model, eval_dataset).item()
    assert metrics["val_loss"] == pytest.approx(expected, rel=1e-6)  # weighted by batch size
    assert trainer.state.log_history[-1] == {**metrics, "step": 0}


def test_compute_metrics_receives_numpy_arrays(tmp_path):
    received = []

    def compute_metrics(prediction):
        received.append(prediction)
        return {"mae": float(np.abs(prediction.predictions - prediction.label_ids).mean())}

    eval_dataset = RegressionDataset(10, seed=1)
    trainer = make_trainer(tmp_path, trainer_kwargs={"compute_metrics": compute_metrics})
    metrics = trainer.evaluate(eval_dataset)
    (prediction,) = received
    assert isinstance(prediction, EvalPrediction)
    assert isinstance(prediction.predictions, np.ndarray)
    assert isinstance(prediction.label_ids, np.ndarray)
    assert prediction.predictions.shape == prediction.label_ids.shape == (10, 1)
    np.testing.assert_array_equal(prediction.label_ids, eval_dataset.y.numpy())
    logits = trainer.model(eval_dataset.x)["logits"].detach().numpy()
    np.testing.assert_allclose(prediction.predictions, logits, rtol=1e-6)
    assert metrics["eval_mae"] == pytest.approx(np.abs(logits - eval_dataset.y.numpy()).mean())


def test_predict_returns_predictions_labels_and_test_metrics(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, max_steps=2, trainer_kwargs={"callbacks": [recorder]})
    trainer.train()
    history = list(trainer.state.log_history)
    logs_before = len(recorder.of("on_log"))
    test_dataset = RegressionDataset(6, seed=3)
    output = trainer.predict(test_dataset)

    assert output.predictions.shape == (6, 1) and output.label_ids.shape == (6, 1)
    np.testing.assert_array_equal(output.label_ids, test_dataset.y.numpy())
    logits = trainer.model(test_dataset.x)["logits"].detach().numpy()
    np.testing.assert_allclose(output.predictions, logits, rtol=1e-6)
    assert set(output.metrics) == {
        "test_loss",
        "test_runtime",
        "test_samples_per_second",
        "test_steps_per_second",
    }
    (call,) = recorder.of("on_predict")
    assert call.kwargs["metrics"] is output.metrics
    assert len(recorder.of("on_log")) == logs_before  # predict does not log
    assert trainer.state.log_history == history


class Unlabelled(torch.utils.data.Dataset):
    def __init__(self, size):
        self.x = RegressionDataset(size).x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index]}


def test_predict_without_labels(tmp_path):
    trainer = make_trainer(tmp_path)
    output = trainer.predict(Unlabelled(5))
    assert output.predictions.shape == (5, 1)
    assert output.label_ids is None
    assert "test_loss" not in output.metrics


def test_eval_dataset_as_a_dict_of_datasets(tmp_path):
    set_seed(0)
    trainer = Trainer(
        TinyRegressor(),
        make_args(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2),
        train_dataset=RegressionDataset(16),
        eval_dataset={"near": RegressionDataset(8, seed=1), "far": RegressionDataset(4)},
    )
    trainer.train()
    keys = {key for entry in trainer.state.log_history for key in entry if key[:5] == "eval_"}
    assert {key.split("_")[1] for key in keys} == {"near", "far"}
    assert "eval_loss" not in keys and {"eval_near_loss", "eval_far_loss"} <= keys
    steps = [e["step"] for e in trainer.state.log_history if "eval_near_loss" in e]
    assert steps == [e["step"] for e in trainer.state.log_history if "eval_far_loss" in e] == [2, 4]

    metrics = trainer.evaluate()
    assert {"eval_near_loss", "eval_far_loss"} <= set(metrics)
    near = full_batch_loss(trainer.model, trainer.eval_dataset["near"]).item()
    assert metrics["eval_near_loss"] == pytest.approx(near, rel=1e-6)
    assert {"val_near_loss", "val_far_loss"} <= set(trainer.evaluate(metric_key_prefix="val"))


# ---------------------------------------------------------------------------- train loss


@pytest.mark.parametrize(
    "logging", [{"logging_steps": 3}, {"logging_strategy": "no"}, {"logging_strategy": "epoch"}]
)
def test_train_loss_is_the_mean_step_loss_whatever_the_logging(tmp_path, logging):
    every = make_trainer(tmp_path / "every", max_steps=6, logging_steps=1)
    every_output = every.train()
    losses = losses_by_step(every.state)
    assert every_output.training_loss == pytest.approx(sum(losses.values()) / 6, rel=1e-6)

    other = make_trainer(tmp_path / "other", max_steps=6, **logging)
    output = other.train()
    assert output.training_loss == pytest.approx(every_output.training_loss, rel=1e-6)
    assert other.state.log_history[-1]["train_loss"] == output.training_loss


def test_evaluating_a_dict_of_datasets_is_one_tracker_session(tmp_path):
    trainer = Trainer(
        TinyRegressor(),
        make_args(tmp_path, report_to=["jsonl"], run_name="named"),
        eval_dataset={"near": RegressionDataset(8, seed=1), "far": RegressionDataset(4)},
    )
    metrics = trainer.evaluate()
    run = read_run(tmp_path / "runs" / "named")
    assert run.sessions == 1 and run.statuses == ["success"]
    assert run.last("eval/near_loss") == metrics["eval_near_loss"]
    assert run.last("eval/far_loss") == metrics["eval_far_loss"]
