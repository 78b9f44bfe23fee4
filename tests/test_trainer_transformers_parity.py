"""Issue 16, in the core (no transformers installed): the loop behaves as transformers'
Trainer where the two are compared in tests/frameworks/test_transformers_dropin.py: one loss
path, the data order, state.epoch, predict() without labels, fp16/bf16 on the CPU, the
checkpoint layout and older trackmux checkpoints, ``transformers_flow``."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from helpers_trainer import Recorder, losses_by_step, make_args, make_trainer
from trackmux import Trainer, TrainingArguments, set_seed
from trackmux.checkpoints import load_tensors
from trackmux.testing.toy import RegressionDataset, TinyRegressor


def l1_eval_loss(model, dataset) -> float:
    with torch.no_grad():
        return nn.functional.l1_loss(model.net(dataset.x), dataset.y).item()


class L1Trainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(x=inputs["x"])
        loss = nn.functional.l1_loss(outputs["logits"], inputs["labels"])
        return (loss, outputs) if return_outputs else loss


def test_compute_loss_override_is_the_loss_of_evaluate_and_predict(tmp_path):
    trainer = make_trainer(
        tmp_path, trainer_class=L1Trainer, max_steps=2, per_device_eval_batch_size=8
    )
    trainer.train()
    dataset = RegressionDataset(8, seed=1)
    expected = l1_eval_loss(trainer.model, dataset)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert trainer.predict(dataset).metrics["test_loss"] == pytest.approx(expected, rel=1e-6)
    with torch.no_grad():
        mse = nn.functional.mse_loss(trainer.model.net(dataset.x), dataset.y).item()
    assert expected != pytest.approx(mse, rel=1e-3)  # the model's own loss is not used


class NamedTarget(nn.Module):
    """Its labels are called ``target``: not a name with "label" in it."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, x, target=None):
        logits = self.linear(x)
        if target is None:
            return {"logits": logits}
        return {"loss": nn.functional.mse_loss(logits, target), "logits": logits}


class TargetData(torch.utils.data.Dataset):
    def __init__(self):
        self.source = RegressionDataset(8, seed=1)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        item = self.source[index]
        return {"x": item["x"], "target": item["labels"]}


@pytest.mark.parametrize("label_names", [None, ["target"]])
def test_label_names_decide_whether_evaluation_has_a_loss(tmp_path, label_names):
    trainer = Trainer(
        NamedTarget(), make_args(tmp_path, label_names=label_names), eval_dataset=TargetData()
    )
    output = trainer.predict(TargetData())
    if label_names is None:  # transformers: no label among forward's arguments, no loss
        assert "test_loss" not in output.metrics and output.label_ids is None
    else:
        assert output.metrics["test_loss"] > 0
        assert output.label_ids.shape == (8, 1)


def test_predict_without_labels_does_not_call_compute_metrics(tmp_path):
    calls = []

    def compute_metrics(prediction):
        calls.append(prediction)
        return {"mean_error": float(abs(prediction.predictions - prediction.label_ids).mean())}

    trainer = make_trainer(tmp_path, trainer_kwargs={"compute_metrics": compute_metrics})

    class Unlabelled(RegressionDataset):
        def __getitem__(self, index):
            return {"x": self.x[index]}

    output = trainer.predict(Unlabelled(6))
    assert calls == [] and output.label_ids is None
    assert output.predictions.shape == (6, 1)
    assert set(output.metrics) == {
        "test_runtime",
        "test_samples_per_second",
        "test_steps_per_second",
    }
    assert "test_mean_error" in trainer.predict(RegressionDataset(6)).metrics
    assert len(calls) == 1


def test_prediction_loss_only_and_eval_accumulation_steps(tmp_path):
    dataset = RegressionDataset(10, seed=1)
    plain = make_trainer(tmp_path / "plain").predict(dataset)
    offloaded = make_trainer(tmp_path / "offload", eval_accumulation_steps=1).predict(dataset)
    assert (offloaded.predictions == plain.predictions).all()
    assert offloaded.metrics["test_loss"] == plain.metrics["test_loss"]
    loss_only = make_trainer(tmp_path / "loss", prediction_loss_only=True).predict(dataset)
    assert loss_only.predictions is None and loss_only.label_ids is None
    assert loss_only.metrics["test_loss"] == plain.metrics["test_loss"]


def test_state_epoch_counts_batches_with_uneven_accumulation(tmp_path):
    trainer = make_trainer(
        tmp_path,
        train_size=36,  # 9 batches of 4
        gradient_accumulation_steps=4,
        num_train_epochs=1,
        logging_steps=1,
    )
    trainer.train()
    epochs = [entry["epoch"] for entry in trainer.state.log_history if "loss" in entry]
    assert epochs == pytest.approx([4 / 9, 8 / 9, 1.0])


@pytest.mark.parametrize("data_seed", [None, 3])
def test_each_epoch_reads_the_samples_in_randperm_order_of_seed_plus_epoch(tmp_path, data_seed):
    seen = []

    def collate(samples):
        seen.extend(int(sample["x"][0].item() * 1e6) for sample in samples)
        return torch.utils.data.default_collate(samples)

    dataset = RegressionDataset(12)
    keys = [int(x[0].item() * 1e6) for x in dataset.x]
    trainer = Trainer(
        TinyRegressor(),
        make_args(tmp_path, num_train_epochs=2, data_seed=data_seed, seed=7),
        train_dataset=dataset,
        data_collator=collate,
    )
    trainer.train()
    seed = 7 if data_seed is None else data_seed
    expected = []
    for epoch in range(2):
        order = torch.randperm(12, generator=torch.Generator().manual_seed(seed + epoch))
        expected += [keys[i] for i in order.tolist()]
    assert seen == expected


def test_fp16_on_the_cpu_trains_in_fp32(tmp_path):
    fp32 = make_trainer(tmp_path / "fp32", max_steps=4, logging_steps=1, use_cpu=True)
    fp16 = make_trainer(tmp_path / "fp16", max_steps=4, logging_steps=1, use_cpu=True, fp16=True)
    fp32.train()
    fp16.train()
    assert fp16.scaler is None
    assert losses_by_step(fp16.state) == losses_by_step(fp32.state)
    grads = [e["grad_norm"] for e in fp16.state.log_history if "grad_norm" in e]
    assert all(g != float("inf") for g in grads)


@pytest.mark.skipif(
    torch.cuda.is_available() and torch.cuda.is_bf16_supported(), reason="a bf16 GPU is here"
)
def test_bf16_without_use_cpu_is_refused_without_a_bf16_gpu():
    with pytest.raises(ValueError, match=r"bf16=True needs a GPU .*use_cpu=True"):
        TrainingArguments(bf16=True)
    assert TrainingArguments(bf16=True, use_cpu=True).bf16


def test_transformers_flow_runs_the_first_step_after_a_stop_in_on_train_begin(tmp_path):
    class StopAtBegin(Recorder):
        def on_train_begin(self, args, state, control, **kwargs):
            control.should_training_stop = True

    for flow, steps in ((False, 0), (True, 1)):
        trainer = make_trainer(
            tmp_path / str(flow),
            max_steps=5,
            transformers_flow=flow,
            trainer_kwargs={"callbacks": [StopAtBegin]},
        )
        assert trainer.train().global_step == steps


def test_remove_unused_columns(tmp_path):
    class WithIds(RegressionDataset):
        def __getitem__(self, index):
            return {**super().__getitem__(index), "id": index}

    def trainer(remove):
        return Trainer(
            TinyRegressor(),
            make_args(tmp_path, max_steps=1, remove_unused_columns=remove),
            train_dataset=WithIds(8),
        )

    assert trainer(True).train().global_step == 1
    with pytest.raises(TypeError, match="id"):
        trainer(False).train()


# ----------------------------------------------------------------------- checkpoints


def run(output_dir, *, resume=None, init_seed=0, callbacks=()):
    set_seed(init_seed)
    trainer = Trainer(
        TinyRegressor(dropout=0.2),
        make_args(
            output_dir,
            max_steps=12,
            logging_steps=1,
            save_strategy="steps",
            save_steps=5,
            eval_strategy="steps",
            eval_steps=4,
        ),
        train_dataset=RegressionDataset(24),
        eval_dataset=RegressionDataset(8, seed=1),
        callbacks=list(callbacks),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def as_older_trackmux_wrote_it(checkpoint, model) -> None:
    """Turn a checkpoint into the layout of trackmux before issue 16: its own keys inside
    trainer_state.json, ``rng_state_0.pth`` with ``torch`` and numpy's keys as a tensor, one
    optimizer group in the model's parameter order."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state.update(json.loads((checkpoint / "trackmux_state.json").read_text()))
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    (checkpoint / "trackmux_state.json").unlink()

    rng = load_tensors(str(checkpoint / "rng_state.pth"))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    old_rng = {
        "python": rng["python"],
        "torch": rng["cpu"],
        "numpy": (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached),
    }
    torch.save(old_rng, checkpoint / "rng_state_0.pth")
    (checkpoint / "rng_state.pth").unlink()

    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    names = [name for name, _ in model.named_parameters()]
    decay = [n for n in names if "bias" not in n]
    new_order = decay + [n for n in names if n not in decay]  # the two groups, in order
    group = {**optimizer["param_groups"][0], "params": list(range(len(names)))}
    old_state = {names.index(n): optimizer["state"][i] for i, n in enumerate(new_order)}
    torch.save({"state": old_state, "param_groups": [group]}, checkpoint / "optimizer.pt")
    scheduler = torch.load(checkpoint / "scheduler.pt", weights_only=True)
    for key in ("base_lrs", "_last_lr", "lr_lambdas"):
        scheduler[key] = scheduler[key][:1]
    torch.save(scheduler, checkpoint / "scheduler.pt")


@pytest.mark.parametrize("layout", ["current", "older trackmux"])
def test_a_checkpoint_resumes_exactly(tmp_path, layout):
    reference = run(tmp_path / "reference")
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "reference" / "checkpoint-5", cut / "checkpoint-5")
    if layout != "current":
        as_older_trackmux_wrote_it(cut / "checkpoint-5", reference.model)
    resumed = run(cut, resume=str(cut / "checkpoint-5"), init_seed=99)
    assert losses_by_step(resumed.state) == losses_by_step(reference.state)
    assert resumed.state.run_name == reference.state.run_name
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], tensor), name


def test_the_control_is_saved_with_the_callbacks(tmp_path):
    run(tmp_path)
    state = json.loads((tmp_path / "checkpoint-10" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["TrainerControl"]["args"]["should_save"] is True
    assert "run_name" not in state and "tracker_runs" not in state


def test_remove_unused_columns_never_hands_a_collator_the_datasets_own_items():
    from collections import OrderedDict

    from torch.utils.data import default_collate

    from trackmux.trainer import _RemoveColumns

    items = [{"x": torch.ones(2), "labels": torch.zeros(1)} for _ in range(3)]
    keep = frozenset({"x", "labels"})

    def popping(samples):  # as transformers' multiple-choice example collator does
        labels = [sample.pop("labels") for sample in samples]
        return {"x": torch.stack([s["x"] for s in samples]), "labels": torch.stack(labels)}

    for _ in range(2):  # a second epoch still finds the labels
        batch = _RemoveColumns(popping, keep)(items)
        assert batch["labels"].shape == (3, 1)
    assert all(set(item) == {"x", "labels"} for item in items)

    # torch's default_collate gets every key kept, or only the kept keys
    batch = _RemoveColumns(default_collate, keep)(items)
    assert set(batch) == {"x", "labels"} and batch["x"].shape == (3, 2)
    with_id = [{**item, "id": n} for n, item in enumerate(items)]
    assert set(_RemoveColumns(default_collate, keep)(with_id)) == {"x", "labels"}
    # a dict subclass still becomes a plain dict batch, as before
    ordered = [OrderedDict(item) for item in items]
    assert type(_RemoveColumns(default_collate, keep)(ordered)) is dict
