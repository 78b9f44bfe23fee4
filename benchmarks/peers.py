"""The peers a user would otherwise pick, on the benchmark's task: Hugging Face transformers'
Trainer and PyTorch Lightning, each without a logger and with TensorBoard.

Both train ``BenchNet`` from the same initial weights on the same in-memory dataset, with
AdamW (lr 1e-3, no weight decay), clipping at 1.0 and a linear schedule over the run, no
workers, no checkpoints, no evaluation, no progress bar, and log every ``logging_steps``
steps. Each is timed at the point of its loop that matches the plain loop's mark: after the
optimizer and scheduler steps, before the step's logging (Hugging Face's ``on_step_end``,
Lightning's ``on_train_batch_end``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings

import torch
from contenders import (
    LEARNING_RATE,
    MAX_GRAD_NORM,
    RunResult,
    Stopwatch,
    Task,
    Window,
    _loader,
    default_device,
)
from torch.utils.data import default_collate


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def transformers_missing() -> str | None:
    """Why Hugging Face's Trainer cannot run here, or None."""
    missing = [m for m in ("transformers", "accelerate") if not _installed(m)]
    if missing:
        return f"not installed: {', '.join(missing)} (nox -s bench-peers installs them)"
    return None


def lightning_module():
    """``lightning.pytorch`` (the ``lightning`` package) or ``pytorch_lightning``, or None."""
    for name in ("lightning.pytorch", "pytorch_lightning"):
        if _installed(name.split(".")[0]):
            return __import__(name, fromlist=["Trainer"])
    return None


def lightning_missing() -> str | None:
    if not (_installed("lightning") or _installed("pytorch_lightning")):
        return "not installed: lightning (nox -s bench-peers installs it)"
    return None


def tensorboard_missing() -> str | None:
    if not _installed("tensorboard"):
        return "not installed: tensorboard"
    return None


@contextlib.contextmanager
def _quiet(*loggers: str):
    """The peers' info lines and warnings (no workers, no GPU, a model without a config)
    would drown the table; stdout goes to /dev/null, as trackmux's PrinterCallback does."""
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            open(os.devnull, "w") as sink,
            contextlib.redirect_stdout(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


# --------------------------------------------------------------------------- transformers


def run_transformers(
    task: Task, window: Window, workdir: str, tensorboard: bool = False, profiler=None
) -> RunResult:
    import transformers

    device = default_device()
    stopwatch = Stopwatch(window, device)
    if profiler is not None:
        stopwatch.on_start.append(profiler.enable)
        stopwatch.on_stop.insert(0, profiler.disable)

    class StopwatchCallback(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stopwatch.mark(state.global_step)

    args = transformers.TrainingArguments(
        output_dir=workdir,
        report_to=["tensorboard"] if tensorboard else "none",
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=window.logging_steps,
        max_steps=window.total,
        per_device_train_batch_size=task.batch_size,
        dataloader_num_workers=0,
        # trackmux does not pin memory either (and on a CPU there is nothing to pin into)
        dataloader_pin_memory=False,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        warmup_steps=0,
        optim="adamw_torch",
        seed=window.seed,
        use_cpu=device.type == "cpu",
    )
    with _quiet("transformers", "accelerate"):
        trainer = transformers.Trainer(
            model=task.model(window.seed),
            args=args,
            train_dataset=task.dataset(window.total, window.seed),
            data_collator=default_collate,
            callbacks=[StopwatchCallback()],
        )
        trainer.train()
    logged = sum(1 for entry in trainer.state.log_history if "loss" in entry)
    return RunResult(stopwatch.per_step, stopwatch.cpu_per_step, {"logged": logged})


# --------------------------------------------------------------------------- lightning


def lightning_trainer(task: Task, window: Window, workdir: str, tensorboard: bool, stopwatch):
    pl = lightning_module()
    total = window.total

    class BenchModule(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = task.model(window.seed)

        def training_step(self, batch, batch_idx):
            loss = self.net(**batch)["loss"]
            # what a Lightning user writes to log the loss; the Trainer's
            # log_every_n_steps decides how often it reaches the logger
            self.log("train_loss", loss, on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self):
            optimizer = torch.optim.AdamW(self.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: max(0.0, 1.0 - step / total)
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
            }

    class StopwatchCallback(pl.Callback):
        # after the optimizer and scheduler steps, before the logger connector's step update
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            stopwatch.mark(trainer.global_step)

    logger = pl.loggers.TensorBoardLogger(save_dir=workdir, name="tb") if tensorboard else False
    trainer = pl.Trainer(
        max_steps=total,
        accelerator="cuda" if stopwatch.device.type == "cuda" else "cpu",
        devices=1,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=window.logging_steps,
        gradient_clip_val=MAX_GRAD_NORM,
        gradient_clip_algorithm="norm",
        default_root_dir=workdir,
        callbacks=[StopwatchCallback()],
    )
    return trainer, BenchModule()


def lightning_model(
    task: Task, window: Window, workdir: str, tensorboard: bool = False, profiler=None
):
    stopwatch = Stopwatch(window, default_device())
    if profiler is not None:
        stopwatch.on_start.append(profiler.enable)
        stopwatch.on_stop.insert(0, profiler.disable)
    lightning_module()  # its import sets its loggers to INFO: import before quietening them
    with _quiet("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        trainer, module = lightning_trainer(task, window, workdir, tensorboard, stopwatch)
        trainer.fit(module, train_dataloaders=_loader(task, window))
    return module.net, RunResult(stopwatch.per_step, stopwatch.cpu_per_step)


def run_lightning(
    task: Task, window: Window, workdir: str, tensorboard: bool = False, profiler=None
) -> RunResult:
    return lightning_model(task, window, workdir, tensorboard, profiler)[1]
