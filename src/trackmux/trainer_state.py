"""TrainerState (what the loop knows, saved in every checkpoint) and TrainerControl (how
callbacks steer it). Names and meanings follow Hugging Face's ``trainer_callback``."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

STATE_FILE_NAME = "trainer_state.json"
#: trackmux's own keys of a checkpoint's state (run name, tracker run identities), kept out
#: of trainer_state.json so that file is exactly transformers' (see trackmux.checkpoints)
TRACKMUX_STATE_FILE_NAME = "trackmux_state.json"


class ExportableState:
    """Mixin for callbacks whose state must survive a resume (early-stopping patience, ...).

    ``state()`` returns ``{"args": constructor kwargs, "attributes": mutable fields}``;
    ``from_state`` rebuilds an object from it.
    """

    def state(self) -> dict:
        raise NotImplementedError("ExportableState subclasses must implement state()")

    @classmethod
    def from_state(cls, state: dict):
        instance = cls(**state.get("args", {}))
        for name, value in state.get("attributes", {}).items():
            setattr(instance, name, value)
        return instance


@dataclass
class TrainerControl(ExportableState):
    """Flags that callbacks set to steer the loop. The Trainer acts on each flag and resets it."""

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> dict:
        return {"args": dataclasses.asdict(self), "attributes": {}}


@dataclass
class TrainerState:
    """Everything the loop knows about the run, saved as ``trainer_state.json`` in every
    checkpoint and restored from it on resume.

    ``logging_steps``, ``eval_steps`` and ``save_steps`` are absolute intervals (a fractional
    ``TrainingArguments`` value is resolved against ``max_steps``). ``tracker_runs`` holds each
    tracker's run identity (a run id, an experiment key) so a resumed run continues the same
    tracker run. ``tracker_runs_pending`` names the trackers whose ``start`` had not returned
    when the checkpoint was saved (within ``TrainingArguments.tracker_close_timeout``) and
    that have no identity in it: resuming it opens a new run for them. Should such a tracker
    start later in the same session, the saved file gets its identity and loses the name.
    Loading ignores keys it does not know, so a newer file still loads, and gives a key an
    older file lacks its default.
    """

    epoch: float = 0.0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    total_flos: float = 0.0
    num_input_tokens_seen: int = 0
    log_history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, Any] | None = None
    stateful_callbacks: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None
    tracker_runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    tracker_runs_pending: list[str] = field(default_factory=list)

    def save_to_json(self, json_path) -> None:
        _write_atomically(json_path, _dumps(dataclasses.asdict(self)))

    @classmethod
    def load_from_json(cls, json_path) -> TrainerState:
        with open(json_path, encoding="utf-8") as handle:
            data = json.load(handle)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})

    def compute_steps(self, args, max_steps: int) -> None:
        """Resolve the logging/eval/save intervals of ``args`` against ``max_steps``."""
        from .training_args import resolve_steps

        for name in ("logging_steps", "eval_steps", "save_steps"):
            value = getattr(args, name)
            if value is None:
                value = args.logging_steps
            setattr(self, name, max(1, resolve_steps(value, max_steps)))


def add_tracker_runs(json_path, identities: dict[str, dict]) -> bool:
    """Add run identities to a saved ``trainer_state.json`` (their names leave
    ``tracker_runs_pending``), replacing the file atomically; the other keys are kept as
    they are. Returns whether the file changed."""
    with open(json_path, encoding="utf-8") as handle:
        data = json.load(handle)
    if not isinstance(data, dict) or not isinstance(data.setdefault("tracker_runs", {}), dict):
        raise ValueError(f"{json_path} is not a trainer state file")
    runs = data["tracker_runs"]
    pending = data.get("tracker_runs_pending") or []
    if all(runs.get(name) == identity for name, identity in identities.items()) and not any(
        name in identities for name in pending
    ):
        return False
    runs.update(identities)
    data["tracker_runs_pending"] = [name for name in pending if name not in identities]
    _write_atomically(json_path, _dumps(data))
    return True


def _dumps(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n"


def _write_atomically(path, text: str) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``: a reader (or a
    resume after a crash) sees the old file or the new one, never half of one."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
    try:
        # "x" creates the file with the umask's mode, like the file it replaces
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _jsonable(value):
    """Fallback for values json cannot write (a tensor or numpy scalar left in a log)."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return repr(value)
