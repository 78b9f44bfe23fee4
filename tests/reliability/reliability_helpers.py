"""Shared pieces of the fault-injection suite: a tracker that records what it receives, the
toy training, and the one count every scenario reports: records sent versus records
received per tracker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from trackmux import Tracker, Trainer, TrainingArguments, set_seed
from trackmux.runlog import find_runs, read_run
from trackmux.testing import describe_child, rest_of_output
from trackmux.testing.toy import RegressionDataset, TinyRegressor


class Recorder(Tracker):
    """Records every call it receives, in order; ``fails_in`` names the calls that raise."""

    name = "recorder"

    def __init__(self, fails_in=(), **settings):
        super().__init__(**settings)
        self.fails_in = set(fails_in)
        self.calls: list[tuple] = []
        self.runs = []
        self.errors: list[Exception] = []

    def _maybe_fail(self, method: str) -> None:
        if method in self.fails_in:
            error = ConnectionError(f"{self.name} backend down in {method}")
            self.errors.append(error)
            raise error

    def start(self, run):
        self._maybe_fail("start")
        self.runs.append(run)
        self.calls.append(("start", run.kind))
        return run.resume or {"id": f"{self.name}-run-{len(self.runs)}"}

    def log_metrics(self, metrics, step, epoch=None):
        self._maybe_fail("log_metrics")
        self.calls.append(("metrics", step, dict(metrics)))

    def log_summary(self, metrics, step):
        self._maybe_fail("log_summary")
        self.calls.append(("summary", step, dict(metrics)))

    def finish(self, status):
        self._maybe_fail("finish")
        self.calls.append(("finish", status))

    def of(self, kind: str) -> list[tuple]:
        return [call for call in self.calls if call[0] == kind]

    @property
    def received(self) -> int:
        """Metrics and summary records that arrived."""
        return len(self.of("metrics")) + len(self.of("summary"))


def make_trainer(output_dir, trackers=(), *, trainer_class=Trainer, callbacks=(), **overrides):
    """Six steps of the toy task, logging every step, reporting to jsonl and ``trackers``."""
    values = {
        "output_dir": str(output_dir),
        "max_steps": 6,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "report_to": ["jsonl"],
        "per_device_train_batch_size": 4,
        "tracker_strict": False,
        "run_name": "reliability",
        **overrides,
    }
    set_seed(0)
    return trainer_class(
        TinyRegressor(),
        TrainingArguments(**values),
        train_dataset=RegressionDataset(16),
        trackers=list(trackers),
        callbacks=list(callbacks),
    )


def sent(trainer) -> int:
    """Records the Trainer sent to every tracker: one per ``log`` call (metrics or summary)."""
    return len(trainer.state.log_history)


def jsonl_records(output_dir) -> list[dict]:
    """The metrics and summary records of the last run log under ``output_dir``."""
    runs = find_runs(output_dir)
    assert runs, f"no jsonl run log under {output_dir}"
    return [r for r in read_run(runs[-1]).records if r["type"] in ("metrics", "summary")]


def report(record_property, sent_count: int, **received: int) -> None:
    """Put the counts in the test report (``--junitxml``): the figures the issue asks for."""
    record_property("records", json.dumps({"sent": sent_count, "received": received}))


def python_process(code: str, *arguments: str, **options) -> subprocess.Popen:
    """Start ``code`` in a fresh interpreter of this environment."""
    env = {k: v for k, v in os.environ.items() if k != "TRACKMUX_STRICT"}
    return subprocess.Popen(
        [sys.executable, "-c", code, *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **options,
    )


#: a training that runs until it is stopped, in its own process: jsonl plus a tracker that
#: appends every record it receives to ``<output_dir>/recorder.jsonl``; it prints
#: ``step N`` when step N+1 begins (steps up to N were logged) and, when training stops on
#: an exception, ``sent N`` (the records the Trainer had sent).
ENDLESS_TRAINING = """
import json, os, sys
from trackmux import Tracker, Trainer, TrainerCallback, TrainingArguments
from trackmux.testing.toy import RegressionDataset, TinyRegressor

output_dir, options = sys.argv[1], json.loads(sys.argv[2])


class FileRecorder(Tracker):
    name = "recorder"

    def start(self, run):
        os.makedirs(output_dir, exist_ok=True)
        self.file = open(os.path.join(output_dir, "recorder.jsonl"), "a", buffering=1)
        self.write(type="start", resume=run.resume, config=run.config)
        return run.resume or {"id": "recorder-run"}

    def log_metrics(self, metrics, step, epoch=None):
        self.write(type="metrics", step=step, metrics=metrics)

    def log_summary(self, metrics, step):
        self.write(type="summary", step=step, metrics=metrics)

    def finish(self, status):
        self.write(type="finish", status=status)
        self.file.close()

    def write(self, **record):
        self.file.write(json.dumps(record) + "\\n")


class Progress(TrainerCallback):
    def on_step_begin(self, args, state, control, **kwargs):
        print("step", state.global_step, flush=True)

    def on_exception(self, args, state, control, exception, **kwargs):
        print("sent", len(state.log_history), flush=True)


arguments = {
    "output_dir": output_dir,
    "max_steps": 10_000_000,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": ["jsonl"],
    "run_name": "endless",
    "disable_tqdm": True,
    "tracker_strict": True,
    **options,
}
trainer = Trainer(
    TinyRegressor(),
    TrainingArguments(**arguments),
    train_dataset=RegressionDataset(64),
    trackers=[FileRecorder()],
    callbacks=[Progress()],
)
trainer.train(resume_from_checkpoint=options.get("resume_from_checkpoint"))
"""


def start_endless_training(output_dir, **options) -> subprocess.Popen:
    return python_process(ENDLESS_TRAINING, str(output_dir), json.dumps(options))


def wait_for_step(process: subprocess.Popen, step: int, timeout: float = 300) -> int:
    """Read the process's progress until step ``step`` was logged; return the last step
    it reported."""
    import selectors
    import time

    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(process.stdout, selectors.EVENT_READ)
    printed = []
    while time.monotonic() < deadline:
        if not selector.select(timeout=1):
            continue
        line = process.stdout.readline()
        if not line:
            stdout, stderr = rest_of_output(process, timeout=60)
            raise AssertionError(
                f"the training process ended before step {step}\n"
                + describe_child(process, "".join(printed) + stdout, stderr)
            )
        printed.append(line)
        if line.startswith("step ") and int(line.split()[1]) >= step:
            return int(line.split()[1])
    process.kill()
    stdout, stderr = rest_of_output(process, timeout=60)
    raise AssertionError(
        f"no step {step} within {timeout} s (killed)\n"
        + describe_child(process, "".join(printed) + stdout, stderr)
    )


def file_records(path) -> list[dict]:
    """The records a FileRecorder wrote (its last line may be torn by a kill -9)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records
