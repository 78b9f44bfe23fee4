"""One tracker integration, four ways to train: the same regression task trained by
trackmux's Trainer, Hugging Face's Trainer (TrackmuxCallback), Lightning (TrackmuxLogger) and
a plain loop (trackmux.start_run), each reporting to MLflow and the jsonl run log. Then each
MLflow run is read back and compared, step by step, with that run's jsonl log.

    pip install -e . -e plugins/trackmux-mlflow 'transformers[torch]' lightning
    python examples/everywhere.py [OUTPUT_DIR]

Prints one line per source: its MLflow run, the metrics it holds, and whether every point
equals the jsonl log's. Exits 1 if any point differs.
"""

from __future__ import annotations

import os
import sys
import tempfile

import torch
from torch import nn

import trackmux

STEPS, BATCH, LR = 12, 8, 0.05


class Regression(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 1)

    def forward(self, x, labels):
        loss = nn.functional.mse_loss(self.linear(x).squeeze(-1), labels)
        return {"loss": loss}


def dataset(size=STEPS * BATCH, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, 8, generator=generator)
    return [{"x": row, "labels": row.sum()} for row in x]


def with_trackmux_trainer(out, trackers):
    args = trackmux.TrainingArguments(
        output_dir=out, run_name="trackmux-trainer", max_steps=STEPS, logging_steps=1,
        per_device_train_batch_size=BATCH, learning_rate=LR, save_strategy="no",
        disable_tqdm=True, report_to=trackers,
    )  # fmt: skip
    trackmux.Trainer(Regression(), args, train_dataset=dataset()).train()
    return os.path.join(out, "runs", "trackmux-trainer")


def with_transformers(out, trackers):
    import transformers

    from trackmux.integrations.transformers import TrackmuxCallback

    args = transformers.TrainingArguments(
        out, run_name="transformers-trainer", max_steps=STEPS, logging_steps=1,
        per_device_train_batch_size=BATCH, learning_rate=LR, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callback = TrackmuxCallback(report_to=trackers)
    trainer = transformers.Trainer(
        Regression(), args, train_dataset=dataset(), callbacks=[callback]
    )
    with callback.guard():
        trainer.train()
    return os.path.join(out, "runs", "transformers-trainer")


def with_lightning(out, trackers):
    import lightning as L

    from trackmux.integrations.lightning import TrackmuxLogger

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Regression()

        def training_step(self, batch, index):
            loss = self.model(**batch)["loss"]
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=LR)

    loader = torch.utils.data.DataLoader(dataset(), batch_size=BATCH)
    logger = TrackmuxLogger(out, "lightning-trainer", report_to=trackers)
    trainer = L.Trainer(
        max_steps=STEPS, logger=logger, log_every_n_steps=1, accelerator="cpu",
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Module(), loader)
    return os.path.join(out, "runs", "lightning-trainer")


def with_plain_loop(out, trackers):
    model = Regression()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    loader = torch.utils.data.DataLoader(dataset(), batch_size=BATCH)
    config = {"learning_rate": LR, "batch_size": BATCH}
    with trackmux.start_run(trackers, config=config, output_dir=out, run_name="plain-loop") as run:
        for step, batch in enumerate(loader, 1):
            loss = model(**batch)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log({"train/loss": loss}, step=step)
    return os.path.join(out, "runs", "plain-loop")


def compare(client, experiment_id, source, run_dir) -> bool:
    log = trackmux.read_run(run_dir)
    runs = client.search_runs([experiment_id], f"attributes.run_name = '{log.name}'")
    if len(runs) != 1:
        print(f"{source:22s} expected one MLflow run named {log.name!r}, found {len(runs)}")
        return False
    run = runs[0]
    same = True
    for name, history in log.metrics.items():
        stored = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)]
        stored.sort()
        same &= stored == sorted((step, float(value)) for step, value in history)
    loss = log.history("train/loss")
    print(
        f"{source:22s} mlflow run {run.info.run_id[:8]} status {run.info.status:8s} "
        f"metrics {len(log.metrics):2d} (train/loss at steps {loss[0][0]}..{loss[-1][0]}, "
        f"{len(loss)} points, last {loss[-1][1]:.4f})  "
        f"{'every point equals the jsonl log' if same else 'DIFFERS from the jsonl log'}"
    )
    return same


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="trackmux-everywhere-")
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{os.path.abspath(out)}/mlflow.db")
    os.environ.setdefault("MLFLOW_EXPERIMENT_NAME", "everywhere")
    trackers = ["jsonl", "mlflow"]
    sources = {
        "trackmux Trainer": with_trackmux_trainer,
        "transformers Trainer": with_transformers,
        "Lightning Trainer": with_lightning,
        "plain loop": with_plain_loop,
    }
    run_dirs = {source: train(out, trackers) for source, train in sources.items()}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(os.environ["MLFLOW_EXPERIMENT_NAME"])
    results = [compare(client, experiment.experiment_id, s, d) for s, d in run_dirs.items()]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
