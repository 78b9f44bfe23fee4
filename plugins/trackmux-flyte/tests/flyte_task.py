"""Toy trainings inside real Flyte tasks, run locally: ``python flyte_task.py '<scenarios>'``.

The tests run it once, in a subprocess whose TMPDIR is a test directory, because flytekit picks
its local sandbox (where each task execution's deck.html lands) under TMPDIR once, when it is
imported. One process runs every scenario: importing torch and flytekit is most of the cost.

Each scenario (JSON, also the task's input, so each execution gets its own deck directory)
has: ``output_dir``; ``report_to``; ``tracker_config``; ``overrides`` (training arguments);
``env`` (environment variables set for it); ``enable_deck``; ``stop_at`` (a step where
training raises, caught in the task); ``evaluate`` (evaluate() after train()); ``outside``
(train in plain code, no task). Printed last: one JSON report per scenario.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from flytekit import current_context, task, workflow
from flytekit.core.checkpointer import SyncCheckpoint

from trackmux.testing import StopAt, run_training


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def train_toy(spec: dict) -> dict:
    from trackmux_flyte.tracker import FlyteTracker

    stop_at = spec.get("stop_at")
    report = {"unconfigured": FlyteTracker.unconfigured_reason()}
    try:
        trainer = run_training(
            spec["output_dir"],
            callbacks=[StopAt(stop_at, RuntimeError("boom"))] if stop_at else [],
            trainer_kwargs={"tracker_config": spec.get("tracker_config")},
            report_to=spec["report_to"],
            **spec.get("overrides", {}),
        )
    except RuntimeError as error:
        report["error"] = str(error)
        return report
    if spec.get("evaluate"):
        trainer.evaluate()
    tracker = next(t for t in trainer.trackers.trackers if t.name == "flyte")
    report.update(where=tracker.where(), synced=tracker.synced, inactive=tracker.inactive)
    return report


def restore_checkpoint(report: dict) -> None:
    """What the task's next attempt would get back: Flyte hands it this attempt's checkpoint
    destination as its source (the destination is private to flytekit, hence the attribute)."""
    destination = current_context().checkpoint._checkpoint_dest
    if not os.path.isdir(destination) or not os.listdir(destination):
        report["restored"] = None
        return
    working = current_context().working_directory
    restored = os.path.join(working, "restored")
    os.makedirs(restored)
    following = SyncCheckpoint(
        checkpoint_dest=os.path.join(working, "next"), checkpoint_src=destination
    )
    following.restore(restored)
    report["restored"] = sorted(os.listdir(restored))
    state = os.path.join(restored, "trainer_state.json")
    if os.path.isfile(state):  # a checkpoint has one, the final model does not
        with open(state) as handle:
            report["restored_step"] = json.load(handle)["global_step"]


def in_task(spec: str) -> str:
    report = train_toy(json.loads(spec))
    report["decks"] = [deck.name for deck in current_context().decks]
    if "error" not in report:
        restore_checkpoint(report)
    return json.dumps(report)


@task(enable_deck=True)
def train(spec: str) -> str:
    return in_task(spec)


@task(enable_deck=False)
def train_without_decks(spec: str) -> str:
    return in_task(spec)


@workflow
def pipeline(spec: str) -> str:
    return train(spec=spec)


@workflow
def pipeline_without_decks(spec: str) -> str:
    return train_without_decks(spec=spec)


def run(spec: dict) -> dict:
    saved = {name: os.environ.get(name) for name in spec.get("env", {})}
    os.environ.update(spec.get("env", {}))
    warnings = Warnings()
    logging.getLogger("trackmux_flyte").addHandler(warnings)
    try:
        if spec.get("outside"):
            report = train_toy(spec)
        else:
            flow = pipeline if spec.get("enable_deck", True) else pipeline_without_decks
            report = json.loads(flow(spec=json.dumps(spec)))
    finally:
        logging.getLogger("trackmux_flyte").removeHandler(warnings)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    report["warnings"] = warnings.messages
    return report


if __name__ == "__main__":
    scenarios = json.loads(sys.argv[1])
    print(json.dumps({name: run(spec) for name, spec in scenarios.items()}))
