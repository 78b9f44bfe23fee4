"""Run by tests/test_distributed.py under torchrun (CPU, gloo): trains the toy model on every
rank and writes what this rank saw to ``<outdir>/rank<r>.json``.

Each rank gets its own output_dir, so the files each rank wrote can be told apart. An
optional second argument, JSON, sets ``report_to`` and ``tracker_config`` (default: jsonl
only): tests/integration/test_reliability_backends.py runs it with real trackers.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from trackmux import Trainer, TrainingArguments
from trackmux.testing.toy import RegressionDataset, TinyRegressor


class SeenDataset(RegressionDataset):
    """Remembers which samples this rank read, in order."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen: list[int] = []

    def __getitem__(self, index):
        self.seen.append(int(index))
        return super().__getitem__(index)


class LocalLossTrainer(Trainer):
    """Keeps this rank's own loss of every optimizer step, before any reduction."""

    local_losses: dict[int, float]

    def training_step(self, model, inputs, accumulation_steps=1):
        loss = super().training_step(model, inputs, accumulation_steps)
        step = self.state.global_step + 1
        self.local_losses[step] = self.local_losses.get(step, 0.0) + loss.item()
        return loss


def main(outdir: str, options: dict) -> None:
    rank = int(os.environ["RANK"])
    torch.manual_seed(0)  # the same initial weights on every rank
    train_dataset = SeenDataset(48)
    eval_dataset = RegressionDataset(9, seed=1)  # not a multiple of the world size
    args = TrainingArguments(
        output_dir=os.path.join(outdir, f"rank{rank}"),
        use_cpu=True,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,  # 24 samples a rank an epoch: 6 batches, 3 steps
        per_device_eval_batch_size=2,
        learning_rate=0.01,
        logging_steps=1,
        eval_strategy="steps",
        eval_steps=3,
        save_steps=3,
        report_to=options.get("report_to", ["jsonl"]),
        run_name="ddp",
        disable_tqdm=True,
        seed=11,
    )
    trainer = LocalLossTrainer(
        TinyRegressor(),
        args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        tracker_config=options.get("tracker_config"),
    )
    trainer.local_losses = {}
    trainer.train()
    model = trainer.model.eval()
    with torch.no_grad():
        local = model(eval_dataset.x, eval_dataset.y)
    prediction = trainer.predict(eval_dataset)
    result = {
        "rank": rank,
        "world_size": int(os.environ["WORLD_SIZE"]),
        "global_step": trainer.state.global_step,
        "is_world_process_zero": trainer.state.is_world_process_zero,
        "is_local_process_zero": trainer.state.is_local_process_zero,
        "local_losses": trainer.local_losses,
        "log_history": trainer.state.log_history,
        "seen": train_dataset.seen,
        "parameters": torch.cat([p.detach().flatten() for p in model.parameters()]).tolist(),
        "full_eval_loss": local["loss"].item(),
        "prediction_shape": list(prediction.predictions.shape),
        "predictions": prediction.predictions.flatten().tolist(),
        "local_predictions": local["logits"].flatten().tolist(),
        "test_loss": prediction.metrics["test_loss"],
    }
    with open(os.path.join(outdir, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(result, handle)
    # the shutdown torch recommends: every rank done, then the group closed on each. Left to
    # the interpreter's exit, gloo sometimes aborted a rank on the loaded CI machine
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
