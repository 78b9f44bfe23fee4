"""``trackmux demo``: train a small regression model for about N seconds, reporting to the
chosen trackers, then say where each one put its data and how to look at it."""

from __future__ import annotations

import time

DEMO_FEATURES = 32


def _time_limit_callback(seconds: float):
    from .trainer_callback import TrainerCallback

    class TimeLimit(TrainerCallback):
        """Ends training once ``seconds`` have passed (the demo's only stopping rule)."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.deadline = time.monotonic() + seconds

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() >= self.deadline:
                control.should_training_stop = True

    return TimeLimit()


def _estimated_steps(model, dataset, seconds: float, batch_size: int) -> int:
    """Steps that fit in ``seconds`` on this machine, from a short timed warm-up."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = {"x": dataset.x[:batch_size], "labels": dataset.y[:batch_size]}

    def step():
        model(**batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(5):  # first steps pay for allocations: keep them out of the estimate
        step()
    begin = time.perf_counter()
    for _ in range(20):
        step()
    per_step = (time.perf_counter() - begin) / 20
    # the real loop also evaluates, saves and logs: leave it some room
    return max(50, int(seconds / (per_step * 1.5)))


def run_demo(report_to: str = "all", output_dir: str = "trackmux_demo", seconds: float = 30.0):
    from .testing.toy import RegressionDataset, TinyRegressor
    from .trainer import Trainer
    from .training_args import TrainingArguments

    train_data = RegressionDataset(4096, features=DEMO_FEATURES, seed=0)
    eval_data = RegressionDataset(512, features=DEMO_FEATURES, seed=1)
    probe = TinyRegressor(DEMO_FEATURES, hidden=256, dropout=0.1)
    steps = _estimated_steps(probe, train_data, seconds, batch_size=32)
    args = TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=32,
        per_device_eval_batch_size=256,
        learning_rate=3e-3,
        warmup_ratio=0.05,
        lr_scheduler_type="cosine",
        logging_steps=max(1, steps // 100),
        eval_strategy="steps",
        eval_steps=max(1, steps // 10),
        save_steps=max(1, steps // 4),
        save_total_limit=2,
        report_to=report_to,
    )
    trainer = Trainer(
        model=TinyRegressor(DEMO_FEATURES, hidden=256, dropout=0.1),
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        callbacks=[_time_limit_callback(seconds)],
        hyperparameters={"dataset": "synthetic regression", "features": DEMO_FEATURES},
    )
    print(f"trackmux demo: training for about {seconds:.0f} s ({steps} steps planned)")
    output = trainer.train()
    metrics = trainer.evaluate()
    print()
    print(
        f"trained {output.global_step} steps: train loss {output.training_loss:.4f}, "
        f"eval loss {metrics['eval_loss']:.4f}"
    )
    print("where the data is:")
    for name, where in trainer.trackers.where():
        print(f"  {name:<12} {where or '(no location reported)'}")
    if not trainer.trackers.trackers:
        print("  (no tracker: report_to was 'none')")
    return 0
