"""``trackmux demo``: train a small regression model for about N seconds, reporting to the
chosen trackers, then say where each one put its data and how to look at it.

The demo is driven by steps: a warm-up (a short run of the same Trainer, the same data and
batch sizes, no tracker) measures a step and an evaluation on this machine, and the plan is
the number of steps that fit in N seconds with its evaluations and checkpoints. Trackers can
take many seconds to start (an MLflow store creates its database, codecarbon probes the
hardware) and would compete with those steps for the CPU: the demo waits until every tracker
has started before its first step, says how long that took, and times the training itself
against the plan. So the learning rate schedule, the evaluations and the checkpoints all
happen, whatever the machine and the trackers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import tempfile
import time

DEMO_FEATURES = 32
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 256
#: evaluations during the planned run (one more at its last step) and checkpoints kept
EVALUATIONS = 5
CHECKPOINTS = 2
#: room left for what the warm-up does not measure (logging, tracker calls, checkpoints)
MARGIN = 1.15
#: seconds the demo waits for its trackers to start before training without the slow ones
START_TIMEOUT = 180.0


def _data():
    from .testing.toy import RegressionDataset

    return (
        RegressionDataset(4096, features=DEMO_FEATURES, seed=0),
        RegressionDataset(512, features=DEMO_FEATURES, seed=1),
    )


def _model():
    from .testing.toy import TinyRegressor

    return TinyRegressor(DEMO_FEATURES, hidden=256, dropout=0.1)


def _arguments(output_dir: str, steps: int, **options):
    """The demo's TrainingArguments: the warm-up and the run share data sizes and rate."""
    from .training_args import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=3e-3,
        **options,
    )


@contextlib.contextmanager
def _quiet_trackmux():
    from ._logging import ensure_default_handler

    ensure_default_handler()  # first: it sets the level this restores
    library = logging.getLogger("trackmux")
    level = library.level
    library.setLevel(logging.WARNING)
    try:
        yield
    finally:
        library.setLevel(level)


def _step_clock():
    from .trainer_callback import TrainerCallback

    class StepClock(TrainerCallback):
        """The time of each step's end, for the warm-up."""

        def __init__(self):
            self.times: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter())

    return StepClock()


def measure(train_data, eval_data, steps: int = 60) -> tuple[float, float]:
    """(seconds per training step, seconds per evaluation) of the demo's Trainer on this
    machine: a short run with no tracker, no run journal and no console output."""
    from .trainer import Trainer
    from .trainer_callback import PrinterCallback

    with tempfile.TemporaryDirectory() as scratch, _quiet_trackmux():
        clock = _step_clock()
        trainer = Trainer(
            model=_model(),
            args=_arguments(
                scratch,
                steps,
                logging_steps=10,
                save_strategy="no",
                disable_tqdm=True,
                report_to="none",
                run_journal=False,
            ),
            train_dataset=train_data,
            eval_dataset=eval_data,
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        begin = time.perf_counter()
        trainer.evaluate()
        evaluation = time.perf_counter() - begin
    timed = clock.times[steps // 3 :]  # the first steps pay for allocations: left out
    per_step = (timed[-1] - timed[0]) / (len(timed) - 1)
    return per_step, evaluation


def plan(seconds: float, per_step: float, evaluation: float) -> int:
    """The steps that fit in ``seconds`` with the demo's evaluations, never fewer than 50."""
    budget = seconds / MARGIN - (EVALUATIONS + 1) * evaluation
    return max(50, int(budget / per_step))


def _trackers_ready(announce):
    from .trainer_callback import TrainerCallback

    class TrackersReady(TrainerCallback):
        """Waits, before the first step, until every tracker has started; then starts the
        training clock (``began``), so that the plan is compared with training alone."""

        def __init__(self):
            self.trainer = None
            self.waited = 0.0
            self.began: float | None = None
            self.ended: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            run = self.trainer.trackers.run if self.trainer is not None else None
            begin = time.perf_counter()
            if run is not None and run.workers:
                announce(run)
                run.flush(START_TIMEOUT)
            self.waited = time.perf_counter() - begin
            self.began = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.ended = time.perf_counter()

    return TrackersReady()


def _announce(run) -> None:
    names = [worker.tracker.name for worker in run.workers if worker.tracker.name != "jsonl"]
    if names:
        print(f"starting the trackers ({', '.join(names)}) before the first step...", flush=True)


def run_demo(report_to: str = "all", output_dir: str = "trackmux_demo", seconds: float = 30.0):
    from .trainer import Trainer

    train_data, eval_data = _data()
    print(f"trackmux demo: measuring a training step on this machine for a {seconds:.0f} s run")
    per_step, evaluation = measure(train_data, eval_data)
    steps = plan(seconds, per_step, evaluation)
    expected = MARGIN * (steps * per_step + (EVALUATIONS + 1) * evaluation)
    args = _arguments(
        output_dir,
        steps,
        warmup_ratio=0.05,
        lr_scheduler_type="cosine",
        logging_steps=max(1, steps // 20),
        eval_strategy="steps",
        eval_steps=max(1, steps // EVALUATIONS),
        save_steps=max(1, steps // CHECKPOINTS),
        save_total_limit=CHECKPOINTS,
        report_to=report_to,
    )
    ready = _trackers_ready(_announce)
    trainer = Trainer(
        model=_model(),
        args=args,
        train_dataset=train_data,
        eval_dataset=eval_data,
        callbacks=[ready],
        hyperparameters={"dataset": "synthetic regression", "features": DEMO_FEATURES},
    )
    ready.trainer = trainer
    print(
        f"planned {steps} steps (about {expected:.0f} s of training): an evaluation every "
        f"{args.eval_steps} steps and at the end, a checkpoint every {args.save_steps}"
    )
    output = trainer.train()
    took = (ready.ended or time.perf_counter()) - (ready.began or 0.0)
    print()
    started = f"; the trackers took {ready.waited:.1f} s to start" if ready.waited >= 0.1 else ""
    print(
        f"trained {output.global_step} steps in {took:.1f} s (planned about {expected:.0f} s){started}"
    )
    print(_losses_line(output.training_loss, trainer.state.log_history))
    _print_where(trainer, output_dir)
    return 0


def _losses_line(training_loss: float, history: list[dict]) -> str:
    evaluations = [entry["eval_loss"] for entry in history if "eval_loss" in entry]
    line = f"train loss {training_loss:.4f} (the mean over the whole run, warm-up included)"
    if evaluations:
        line += (
            f"; eval loss {evaluations[-1]:.4f} (the model at the end, on held-out data; "
            f"{evaluations[0]:.4f} at the first evaluation)"
        )
    return line


def _print_where(trainer, output_dir: str) -> None:
    print("where the data is, and how to look at it:")
    where = trainer.trackers.where()
    for name, place in where:
        print(f"  {name:<12} {place or '(no location reported)'}")
    if any(name == "jsonl" for name, _ in where) and importlib.util.find_spec("matplotlib"):
        print(f"  {'':<12} trackmux plot {output_dir} (draws the curves into the run directory)")
    if not where:
        print("  (no tracker, and the run journal was turned off)")
