"""TrainerState (what the loop knows, saved in every checkpoint) and TrainerControl (how
callbacks steer it). Names and meanings follow Hugging Face's ``trainer_callback``."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

STATE_FILE_NAME = "trainer_state.json"


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
    tracker run. Loading ignores keys it does not know, so a newer file still loads.
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

    def save_to_json(self, json_path) -> None:
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=_jsonable)
        with open(json_path, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")

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


def _jsonable(value):
    """Fallback for values json cannot write (a tensor or numpy scalar left in a log)."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    return repr(value)
