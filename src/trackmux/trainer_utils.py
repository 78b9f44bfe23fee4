"""Small value types and helpers the Trainer returns or uses: outputs, seeding, RNG state
capture, checkpoint discovery. The learning-rate schedules live in :mod:`trackmux.lr_schedules`."""

from __future__ import annotations

import json
import logging
import os
import random
import re
from typing import Any, NamedTuple

import torch

logger = logging.getLogger(__name__)

PREFIX_CHECKPOINT_DIR = "checkpoint"
#: a checkpoint is written as ``checkpoint-<step>.tmp`` and renamed once complete; that name
#: never matches a checkpoint, so resume cannot pick one that is half written
TEMPORARY_SUFFIX = ".tmp"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite and ``TrainingArguments.stop_on_nonfinite_loss``
    asks training to stop on it."""


class EvalPrediction(NamedTuple):
    """What ``compute_metrics`` receives: numpy arrays of predictions and labels."""

    predictions: Any
    label_ids: Any


class PredictionOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: dict[str, float]


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


def set_seed(seed: int) -> None:
    """Seed Python, numpy (when installed) and torch, on every device."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def capture_rng_state() -> dict:
    """The RNG state of every generator training uses, in a form ``torch.load(...,
    weights_only=True)`` accepts (no pickled numpy objects)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), pos, has_gauss, cached)
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _as_tuple(value):
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(item) for item in value)
    return value


def sorted_checkpoints(output_dir) -> list[str]:
    """Checkpoint directories under ``output_dir``, oldest step first."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for entry in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(entry)
        if match and os.path.isdir(os.path.join(output_dir, entry)):
            found.append((int(match.group(1)), os.path.join(output_dir, entry)))
    return [path for _, path in sorted(found)]


def get_last_checkpoint(output_dir) -> str | None:
    """The newest complete checkpoint: its trainer_state.json, written last, is there and
    holds a JSON object. Checkpoints are written under a temporary name and renamed when
    complete; one from an older version killed while saving (no state file) is passed over,
    and one whose state file is damaged (empty, truncated, not an object) is passed over with
    a warning, in favour of the one before it."""
    for checkpoint in reversed(sorted_checkpoints(output_dir)):
        state_file = os.path.join(checkpoint, "trainer_state.json")
        if not os.path.isfile(state_file):
            continue
        problem = damaged_state_file(state_file)
        if problem is None:
            return checkpoint
        logger.warning(
            "skipping checkpoint %s: its trainer_state.json %s; looking for an older one",
            checkpoint,
            problem,
        )
    return None


def damaged_state_file(path) -> str | None:
    """Why the trainer state file ``path`` cannot be resumed from, or None if it can."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError) as error:
        return f"cannot be read ({error})"
    except ValueError as error:
        return f"is not valid JSON (empty or truncated? {error})"
    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not an object"
    return None
