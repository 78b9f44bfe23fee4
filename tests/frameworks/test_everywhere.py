"""examples/everywhere.py: the same task trained by trackmux's Trainer, Hugging Face's Trainer,
Lightning and a plain loop, each reporting to one real MLflow server; every MLflow point
equals the run's jsonl log. Needs transformers and Lightning together (the `everywhere`
nox session)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from trackmux.testing import describe_child, run_child

pytest.importorskip("transformers")
pytest.importorskip("lightning")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "everywhere.py"
SOURCES = ("trackmux Trainer", "transformers Trainer", "Lightning Trainer", "plain loop")


def test_the_same_metrics_arrive_in_mlflow_from_four_ways_to_train(mlflow_server, tmp_path):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": mlflow_server,
        "MLFLOW_EXPERIMENT_NAME": f"everywhere-{tmp_path.name}",
    }
    result = run_child(
        [sys.executable, str(EXAMPLE), str(tmp_path)],
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, describe_child(result)
    lines = [line for line in result.stdout.splitlines() if line.startswith(SOURCES)]
    assert [line.split("  ")[0].strip() for line in lines] == list(SOURCES), describe_child(result)
    for line in lines:
        assert "status FINISHED" in line and "every point equals the jsonl log" in line, (
            f"{line}\n{describe_child(result)}"
        )
        assert "12 points" in line, f"{line}\n{describe_child(result)}"
