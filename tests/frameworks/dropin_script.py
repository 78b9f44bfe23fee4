"""A training script written for Hugging Face transformers, in the shape of its examples
(``run_classification.py``): TrainingArguments, a Trainer subclass that overrides
``compute_loss`` (a class-weighted loss), ``compute_metrics``, train, evaluate, predict.

test_transformers_dropin.py runs it as it is, and again with only the import line below
changed to ``from trackmux import ...``; both must log the same numbers, step for step.
It writes what it logged to OUTPUT_DIR/logged.json, and uses nothing but torch and the
library it imports (a tiny model and synthetic data: no download).

Usage: python dropin_script.py OUTPUT_DIR [RESUME_FROM]
"""

import json
import os
import sys

import torch
from torch import nn

# the test swaps the next line for the same import from trackmux
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments, set_seed

CLASS_WEIGHTS = torch.tensor([1.0, 2.0, 0.5])


class Blobs(torch.utils.data.Dataset):
    """Three noisy classes in 8 dimensions; without ``labels`` when ``labelled`` is False."""

    def __init__(self, size, seed, labelled=True):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 3, (size,), generator=generator)
        centres = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
        self.x = centres[self.labels] + 0.8 * torch.randn(size, 8, generator=generator)
        self.labelled = labelled

    def __len__(self):
        return len(self.x)

    def __getitem__(self, index):
        item = {"x": self.x[index]}
        if self.labelled:
            item["labels"] = self.labels[index]
        return item


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1))
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, 3)

    def forward(self, x, labels=None):
        logits = self.head(self.norm(self.body(x)))
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}


class WeightedLossTrainer(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        loss = nn.functional.cross_entropy(outputs["logits"], labels, weight=CLASS_WEIGHTS)
        return (loss, outputs) if return_outputs else loss


def compute_metrics(eval_pred):
    predictions, labels = eval_pred
    return {"accuracy": float((predictions.argmax(-1) == labels).mean())}


def main(output_dir, resume_from=None):
    set_seed(3)
    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=3,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=5,
        gradient_accumulation_steps=4,  # 9 batches an epoch: an uneven last window
        learning_rate=0.02,
        weight_decay=0.01,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        max_grad_norm=0.5,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        seed=11,
        data_seed=5,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = WeightedLossTrainer(
        model=Classifier(),
        args=args,
        train_dataset=Blobs(36, seed=1),
        eval_dataset=Blobs(12, seed=2),
        compute_metrics=compute_metrics,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=10)],
    )
    trainer.train(resume_from_checkpoint=resume_from)
    evaluated = trainer.evaluate()
    predicted = trainer.predict(Blobs(7, seed=3, labelled=False))
    (stopping,) = [
        c for c in trainer.callback_handler.callbacks if hasattr(c, "early_stopping_patience")
    ]
    logged = {
        "patience_counter": stopping.early_stopping_patience_counter,
        "best_global_step": trainer.state.best_global_step,
        "log_history": trainer.state.log_history,
        "evaluate": evaluated,
        "predict_metrics": predicted.metrics,
        "predictions": predicted.predictions.tolist(),
        "weights": {k: v.tolist() for k, v in trainer.model.state_dict().items()},
    }
    with open(os.path.join(output_dir, "logged.json"), "w", encoding="utf-8") as handle:
        json.dump(logged, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
