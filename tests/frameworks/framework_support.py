"""What the transformers and Lightning tests share: running a docs example as a script, and
reading metrics back from TensorBoard and MLflow in the run log's terms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from trackmux.testing import describe_child, run_child, runnable_blocks

DOCS = Path(__file__).resolve().parents[2] / "docs"


def doc_examples(page: str) -> list[str]:
    """The ``<!-- runnable -->`` python blocks of docs/<page>."""
    return runnable_blocks(DOCS / page)


def run_script(code: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``code`` as a script in a fresh interpreter (as a reader would), in ``cwd``."""
    script = cwd / "script.py"
    script.write_text(code, encoding="utf-8")
    return run_child(
        [sys.executable, str(script)],
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )


def import_error_without(framework: str, tmp_path: Path) -> str:
    """What importing ``trackmux.integrations.<framework>`` says when the framework is not
    installed (run in a fresh interpreter where it cannot be imported)."""
    code = (
        "import sys\n"
        f"sys.modules[{framework!r}] = None  # as if it were not installed\n"
        "try:\n"
        f"    import trackmux.integrations.{framework}\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        f"    raise SystemExit('imported without {framework}')\n"
    )
    result = run_script(code, tmp_path)
    assert result.returncode == 0, describe_child(result)
    return result.stdout


def tensorboard_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(event.step, event.value) for event in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def mlflow_metrics(uri: str, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    history = {}
    for name in names:
        points = sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)
        history[name] = [(point.step, point.value) for point in points]
    return history


def close_to(history, expected, rel: float = 1e-6) -> bool:
    """Same steps in the same order, values equal within ``rel`` (TensorBoard keeps float32)."""
    if [step for step, _ in history] != [step for step, _ in expected]:
        return False
    return all(abs(a - b) <= rel * max(1.0, abs(b)) for (_, a), (_, b) in zip(history, expected))
