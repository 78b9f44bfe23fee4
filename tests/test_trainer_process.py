"""What only a fresh process can show: what importing trackmux and building a Trainer load,
and how a run ends when the process gets SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from trackmux.runlog import read_run
from trackmux.testing import describe_child, rest_of_output, run_child

BACKENDS = (
    "tensorboard",
    "tensorboardX",
    "torch.utils.tensorboard",
    "wandb",
    "mlflow",
    "comet_ml",
    "neptune",
    "clearml",
    "dvclive",
    "codecarbon",
    "azureml",
    "dagshub",
    "flytekit",
    "swanlab",
    "trackio",
    "aim",
)


def python(code: str, *arguments: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_child(
        [sys.executable, "-c", textwrap.dedent(code), *arguments], timeout=timeout, check=False
    )


def test_import_trackmux_loads_neither_torch_nor_pluggy():
    result = python(
        """
        import sys
        import trackmux
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "pluggy"))
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, describe_child(result)


def test_building_a_trainer_imports_no_tracker_backend(tmp_path):
    result = python(
        """
        import json, sys
        from trackmux import Trainer, TrainingArguments
        from trackmux.testing.toy import RegressionDataset, TinyRegressor

        backends = tuple(json.loads(sys.argv[2]))

        def loaded():
            return sorted(
                m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in backends)
            )

        built = []
        for report_to in ("all", ["jsonl"]):
            args = TrainingArguments(
                output_dir=sys.argv[1], max_steps=2, report_to=report_to, disable_tqdm=True
            )
            built.append(Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(8)))
        assert not loaded(), "building a Trainer imported " + ", ".join(loaded())
        built[-1].train()  # jsonl only: plugin discovery must not import a backend either
        assert not loaded(), "training with report_to=['jsonl'] imported " + ", ".join(loaded())
        """,
        str(tmp_path),
        json.dumps(BACKENDS),
    )
    assert result.returncode == 0, describe_child(result)


LONG_TRAINING = """
import sys
from trackmux import Trainer, TrainingArguments
from trackmux.testing.toy import RegressionDataset, TinyRegressor

args = TrainingArguments(
    output_dir=sys.argv[1],
    max_steps=10_000_000,
    logging_steps=5,
    save_strategy="no",
    report_to=["jsonl"],
    run_name="sigterm",
    disable_tqdm=True,
)
Trainer(TinyRegressor(), args, train_dataset=RegressionDataset(64)).train()
"""


def first_metrics_record(events, process, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = rest_of_output(process, timeout=30)
            pytest.fail(
                "the training process ended before it logged\n"
                + describe_child(process, "", stderr)
            )
        if events.is_file():
            for line in events.read_text().splitlines():
                if line.endswith("}") and json.loads(line)["type"] == "metrics":
                    return json.loads(line)
        time.sleep(0.05)
    process.kill()
    _, stderr = rest_of_output(process, timeout=30)
    pytest.fail(
        f"no metrics record in {events} after {timeout} s\n" + describe_child(process, "", stderr)
    )


def test_sigterm_closes_the_run_log_as_killed(tmp_path):
    events = tmp_path / "runs" / "sigterm" / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-c", LONG_TRAINING, str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # generous: a loaded machine takes a minute to import torch and take the first steps
        first = first_metrics_record(events, process, timeout=300)
        process.send_signal(signal.SIGTERM)
        _, stderr = rest_of_output(process, timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    child = describe_child(process, "", stderr)
    assert process.returncode != 0, child
    assert "received signal SIGTERM" in stderr, child
    run = read_run(events)
    assert run.status == "killed", child
    assert run.statuses == ["killed"], child
    assert run.history("train/loss")[0][0] == first["step"] == 5, child
    assert run.records[-1]["type"] == "finish", child
