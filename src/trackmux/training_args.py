"""Training configuration for the trackmux :class:`~trackmux.trainer.Trainer`.

:class:`TrainingArguments` mirrors the names and defaults of Hugging Face
``transformers.TrainingArguments`` for the options trackmux supports, and adds a few
trackmux-only options (the ``tracker_*`` fields, which control the experiment-tracker plugins,
and ``save_on_interrupt``).

Every value is checked when the object is built, and again whenever a field is reassigned
afterwards, so a typo or an out-of-range number fails early with a message that names the
field, shows the bad value and says what is allowed. Checks that involve several fields run in
:meth:`TrainingArguments.validate`, which ``__post_init__`` calls and which the trainer calls
again when training starts.

This module uses only the standard library at import time; ``torch`` is imported lazily by
:attr:`TrainingArguments.device`.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "INTERVAL_STRATEGIES",
    "JOURNAL_ERROR_MODES",
    "SAVE_STRATEGIES",
    "SCHEDULER_TYPES",
    "STRICT_ENV_VAR",
    "TRACKER_ARTIFACT_POLICIES",
    "TRUTHY_ENV_VALUES",
    "TrainingArguments",
    "resolve_steps",
]

SCHEDULER_TYPES: tuple[str, ...] = (
    "linear",
    "cosine",
    "constant",
    "constant_with_warmup",
    "polynomial",
)
"""Allowed values of :attr:`TrainingArguments.lr_scheduler_type`."""

INTERVAL_STRATEGIES: tuple[str, ...] = ("no", "steps", "epoch")
"""Allowed values of ``logging_strategy`` and ``eval_strategy``."""

SAVE_STRATEGIES: tuple[str, ...] = ("no", "steps", "epoch", "best")
"""Allowed values of ``save_strategy``."""

TRACKER_ARTIFACT_POLICIES: tuple[str, ...] = ("none", "end", "checkpoint", "best", "last")
TRACKER_DELIVERY_MODES: tuple[str, ...] = ("process", "thread")
"""Allowed values of ``tracker_delivery`` (None: env ``TRACKMUX_DELIVERY``, else "process")."""
"""Allowed values of ``tracker_artifacts``."""

JOURNAL_ERROR_MODES: tuple[str, ...] = ("retry", "stop")
"""Allowed values of ``journal_errors``."""

STRICT_ENV_VAR = "TRACKMUX_STRICT"
"""Environment variable read when ``tracker_strict`` is ``None``."""

TRUTHY_ENV_VALUES: frozenset[str] = frozenset({"1", "true", "yes", "on"})
"""Values of :data:`STRICT_ENV_VAR` (case-insensitive, stripped) that mean *strict*."""

_CLS = "TrainingArguments"
_SEED_LIMIT = 2**32  # what numpy / python seeding accepts without complaint: [0, 2**32)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _ceil(x: float) -> int:
    """``math.ceil`` that ignores floating-point noise (``0.07 * 100`` is 7, not 8)."""
    nearest = round(x)
    if math.isclose(x, nearest, rel_tol=1e-9, abs_tol=1e-9):
        return int(nearest)
    return math.ceil(x)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _looks_numeric(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _type_error(name: str, value: Any, expected: str) -> TypeError:
    wants_number = "number" in expected or "an int" in expected
    hint = " (pass a number, not a string)" if wants_number and _looks_numeric(value) else ""
    return TypeError(
        f"{_CLS}.{name}={value!r} has the wrong type ({type(value).__name__}); "
        f"expected {expected}{hint}"
    )


def _value_error(name: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{_CLS}.{name}={value!r} is not allowed; expected {expected}")


def _range_text(
    low: float | None,
    high: float | None,
    *,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> str:
    def num(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if low is not None and high is not None:
        left = "[" if low_inclusive else "("
        right = "]" if high_inclusive else ")"
        return f"in {left}{num(low)}, {num(high)}{right}"
    if low is not None:
        return f"{'>=' if low_inclusive else '>'} {num(low)}"
    if high is not None:
        return f"{'<=' if high_inclusive else '<'} {num(high)}"
    return ""


def _in_range(
    value: float,
    low: float | None,
    high: float | None,
    low_inclusive: bool,
    high_inclusive: bool,
) -> bool:
    if low is not None and (value < low or (value == low and not low_inclusive)):
        return False
    return not (high is not None and (value > high or (value == high and not high_inclusive)))


# --------------------------------------------------------------------------------------------
# Single-field checkers. Each takes the proposed value and returns the value to store
# (possibly normalised: ints become floats for float fields, tuples become lists, ...), or
# raises TypeError / ValueError.
# --------------------------------------------------------------------------------------------

Checker = Callable[[Any], Any]


def _check_bool(name: str, *, optional: bool = False) -> Checker:
    expected = "None or a bool (True or False)" if optional else "a bool (True or False)"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not isinstance(value, bool):
            raise _type_error(name, value, expected)
        return value

    return check


def _check_int(
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    high_inclusive: bool = True,
    optional: bool = False,
) -> Checker:
    rng = _range_text(low, high, high_inclusive=high_inclusive)
    expected = f"an int {rng}".rstrip()
    if optional:
        expected = f"None or {expected}"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_int(value):
            raise _type_error(name, value, expected)
        if not _in_range(value, low, high, True, high_inclusive):
            raise _value_error(name, value, expected)
        return int(value)

    return check


def _check_float(
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    optional: bool = False,
) -> Checker:
    rng = _range_text(low, high, low_inclusive=low_inclusive, high_inclusive=high_inclusive)
    expected = f"a finite number {rng}".rstrip()
    if optional:
        expected = f"None or {expected}"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_real(value):
            raise _type_error(name, value, expected)
        number = float(value)
        if not math.isfinite(number) or not _in_range(
            number, low, high, low_inclusive, high_inclusive
        ):
            raise _value_error(name, value, expected)
        return number

    return check


def _check_steps(name: str, *, optional: bool = False, allow_zero: bool = True) -> Checker:
    """Interval fields (``logging_steps``, ``eval_steps``, ``save_steps``).

    A value in ``(0, 1)`` is a fraction of the total number of training steps; a value >= 1
    must be a whole number and is stored as an ``int`` (as in Hugging Face).
    """
    lower = ">= 0" if allow_zero else "> 0"
    expected = (
        f"a number {lower}: a whole number of steps, or a fraction in (0, 1) of the total "
        "training steps"
    )
    if optional:
        expected = f"None or {expected}"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        if not _is_real(value):
            raise _type_error(name, value, expected)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise _value_error(name, value, expected)
        if value >= 1:
            if value != int(value):
                raise ValueError(
                    f"{_CLS}.{name}={value!r} is not allowed; a value >= 1 must be a whole "
                    f"number of steps (a value below 1 is a fraction of the total training "
                    f"steps)"
                )
            return int(value)
        if _is_int(value):  # 0
            return int(value)
        return float(value)

    return check


def _check_choice(name: str, choices: Sequence[str], *, optional: bool = False) -> Checker:
    listing = ", ".join(repr(c) for c in choices)

    def check(value: Any) -> Any:
        if optional and value is None:
            return None
        if isinstance(value, enum.Enum) and isinstance(value.value, str):
            value = value.value  # e.g. a transformers IntervalStrategy member
        if not isinstance(value, str):
            raise _type_error(name, value, f"a str, one of {listing}")
        if value in choices:
            return str(value)
        message = f"{_CLS}.{name}={value!r} is not allowed; choose one of {listing}"
        close = difflib.get_close_matches(value, choices, n=1)
        if not close:
            close = difflib.get_close_matches(value.strip().lower(), choices, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        raise ValueError(message)

    return check


def _check_path(name: str, *, optional: bool = False, expanduser: bool = False) -> Checker:
    expected = "a non-empty str (or os.PathLike)"
    if optional:
        expected = f"None or {expected}"

    def check(value: Any) -> Any:
        if value is None and optional:
            return None
        path = os.fspath(value) if isinstance(value, os.PathLike) else value
        if not isinstance(path, str):
            raise _type_error(name, value, expected)
        if not path:
            raise _value_error(name, value, expected)
        return os.path.expanduser(path) if expanduser else path

    return check


def _check_optional_str(name: str) -> Checker:
    def check(value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        raise _type_error(name, value, "None or a str")

    return check


def _check_max_steps(value: Any) -> Any:
    expected = "-1 (train for num_train_epochs) or an int > 0"
    if not _is_int(value):
        raise _type_error("max_steps", value, expected)
    if value != -1 and value <= 0:
        raise _value_error("max_steps", value, expected)
    return int(value)


def _check_report_to(value: Any) -> Any:
    expected = 'None, a str (e.g. "all", "none", "mlflow") or a list of str'
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise TypeError(
                    f"{_CLS}.report_to={value!r} has the wrong type: item {index} is "
                    f"{item!r} ({type(item).__name__}); expected {expected}"
                )
        return list(value)
    raise _type_error("report_to", value, expected)


_FIELD_CHECKS: dict[str, Checker] = {
    "output_dir": _check_path("output_dir", expanduser=True),
    "overwrite_output_dir": _check_bool("overwrite_output_dir"),
    "num_train_epochs": _check_float("num_train_epochs", low=0),
    "max_steps": _check_max_steps,
    "per_device_train_batch_size": _check_int("per_device_train_batch_size", low=1),
    "per_device_eval_batch_size": _check_int("per_device_eval_batch_size", low=1),
    "gradient_accumulation_steps": _check_int("gradient_accumulation_steps", low=1),
    "learning_rate": _check_float("learning_rate", low=0),
    "weight_decay": _check_float("weight_decay", low=0),
    "adam_beta1": _check_float("adam_beta1", low=0, high=1, high_inclusive=False),
    "adam_beta2": _check_float("adam_beta2", low=0, high=1, high_inclusive=False),
    "adam_epsilon": _check_float("adam_epsilon", low=0),
    "max_grad_norm": _check_float("max_grad_norm", low=0, optional=True),
    "lr_scheduler_type": _check_choice("lr_scheduler_type", SCHEDULER_TYPES),
    "warmup_steps": _check_int("warmup_steps", low=0),
    "warmup_ratio": _check_float("warmup_ratio", low=0, high=1, high_inclusive=False),
    "logging_strategy": _check_choice("logging_strategy", INTERVAL_STRATEGIES),
    "logging_steps": _check_steps("logging_steps"),
    "logging_first_step": _check_bool("logging_first_step"),
    "eval_strategy": _check_choice("eval_strategy", INTERVAL_STRATEGIES),
    "eval_steps": _check_steps("eval_steps", optional=True, allow_zero=False),
    "save_strategy": _check_choice("save_strategy", SAVE_STRATEGIES),
    "save_steps": _check_steps("save_steps"),
    "save_total_limit": _check_int("save_total_limit", low=1, optional=True),
    "load_best_model_at_end": _check_bool("load_best_model_at_end"),
    "metric_for_best_model": _check_optional_str("metric_for_best_model"),
    "greater_is_better": _check_bool("greater_is_better", optional=True),
    "seed": _check_int("seed", low=0, high=_SEED_LIMIT, high_inclusive=False),
    "run_name": _check_optional_str("run_name"),
    "disable_tqdm": _check_bool("disable_tqdm"),
    "report_to": _check_report_to,
    "use_cpu": _check_bool("use_cpu"),
    "bf16": _check_bool("bf16"),
    "fp16": _check_bool("fp16"),
    "dataloader_num_workers": _check_int("dataloader_num_workers", low=0),
    "resume_from_checkpoint": _check_path("resume_from_checkpoint", optional=True),
    "tracker_strict": _check_bool("tracker_strict", optional=True),
    "tracker_artifacts": _check_choice("tracker_artifacts", TRACKER_ARTIFACT_POLICIES),
    "tracker_queue_size": _check_int("tracker_queue_size", low=1),
    "tracker_close_timeout": _check_float("tracker_close_timeout", low=0, low_inclusive=False),
    "tracker_stall_timeout": _check_float("tracker_stall_timeout", low=0, low_inclusive=False),
    "tracker_delivery": _check_choice("tracker_delivery", TRACKER_DELIVERY_MODES, optional=True),
    "save_on_interrupt": _check_bool("save_on_interrupt"),
    "journal_errors": _check_choice("journal_errors", JOURNAL_ERROR_MODES),
    "stop_on_nonfinite_loss": _check_bool("stop_on_nonfinite_loss"),
}

# Fields that validate() may fill in from other fields (as Hugging Face does in __post_init__).
# They are re-derived on every validate() until the user assigns them explicitly.
_INFERABLE = frozenset({"eval_steps", "metric_for_best_model", "greater_is_better"})


def resolve_steps(value: float, max_steps: int) -> int:
    """Turn a ``logging_steps`` / ``eval_steps`` / ``save_steps`` value into a step count.

    A value below 1 is a fraction of ``max_steps`` (the total number of optimisation steps of
    the run) and becomes ``ceil(value * max_steps)``; a value >= 1 is a whole number of steps
    and becomes ``int(value)``. ``0`` stays ``0``.

    Raises:
        TypeError: ``value`` is not a number, or ``max_steps`` is not an int.
        ValueError: ``value`` is negative or not finite, or ``value`` is a fraction and
            ``max_steps`` is not positive (the total is unknown).
    """
    if not _is_real(value):
        raise TypeError(
            f"resolve_steps: value={value!r} has the wrong type ({type(value).__name__}); "
            "expected a number >= 0"
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"resolve_steps: value={value!r} is not allowed; expected a number >= 0")
    if value >= 1:
        return int(value)
    if value == 0:
        return 0
    if not _is_int(max_steps):
        raise TypeError(
            f"resolve_steps: max_steps={max_steps!r} has the wrong type "
            f"({type(max_steps).__name__}); expected an int > 0"
        )
    if max_steps <= 0:
        raise ValueError(
            f"resolve_steps: value={value!r} is a fraction of the total training steps, so "
            f"max_steps must be > 0, got max_steps={max_steps!r}"
        )
    return _ceil(value * max_steps)


def _env_int(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(
            f"environment variable {name}={raw!r} is not an int; expected an int >= {low}"
        ) from None
    if value < low:
        raise ValueError(f"environment variable {name}={raw!r} is not allowed; expected >= {low}")
    return value


# --------------------------------------------------------------------------------------------
# TrainingArguments
# --------------------------------------------------------------------------------------------


@dataclass
class TrainingArguments:
    """Options for :class:`trackmux.Trainer`.

    Names and defaults follow Hugging Face ``transformers.TrainingArguments`` where the option
    exists there; the ``tracker_*`` fields are trackmux-only. See the *Training arguments*
    reference page for the full table of fields, allowed values and validation rules.

    Every field is checked at construction and again on each later assignment
    (``args.learning_rate = -1`` raises at once). Rules that involve several fields are checked
    by :meth:`validate`, which runs at construction and when training starts.
    """

    # --- output ---
    output_dir: str = "trainer_output"
    overwrite_output_dir: bool = False

    # --- length of training ---
    num_train_epochs: float = 3.0
    max_steps: int = -1

    # --- batching ---
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1

    # --- optimiser ---
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0

    # --- scheduler ---
    lr_scheduler_type: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.0

    # --- logging ---
    logging_strategy: str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False

    # --- evaluation ---
    eval_strategy: str = "no"
    eval_steps: float | None = None

    # --- checkpoints ---
    save_strategy: str = "steps"
    save_steps: float = 500
    save_total_limit: int | None = None
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None

    # --- run ---
    seed: int = 42
    run_name: str | None = None
    disable_tqdm: bool = False
    report_to: str | list[str] | None = "all"

    # --- hardware / data loading ---
    use_cpu: bool = False
    bf16: bool = False
    fp16: bool = False
    dataloader_num_workers: int = 0
    resume_from_checkpoint: str | None = None

    # --- trackmux-only: experiment trackers ---
    tracker_strict: bool | None = None
    tracker_artifacts: str = "none"
    tracker_queue_size: int = 10000
    tracker_close_timeout: float = 30.0
    tracker_stall_timeout: float = 300.0
    tracker_delivery: str | None = None
    save_on_interrupt: bool = False
    journal_errors: str = "retry"
    stop_on_nonfinite_loss: bool = False

    # ----------------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inferred", frozenset())
        self.validate()
        object.__setattr__(self, "_checked", True)

    def __setattr__(self, name: str, value: Any) -> None:
        state = self.__dict__
        if state.get("_checked"):
            check = _FIELD_CHECKS.get(name)
            if check is not None:
                value = check(value)
                inferred = state.get("_inferred", frozenset())
                if name in inferred:  # the user now owns this value
                    object.__setattr__(self, "_inferred", inferred - {name})
            elif not name.startswith("_") and name not in state and not hasattr(type(self), name):
                close = difflib.get_close_matches(name, list(_FIELD_CHECKS), n=1, cutoff=0.85)
                if close:
                    raise AttributeError(
                        f"{_CLS} has no field {name!r} (did you mean {close[0]!r}?)"
                    )
        object.__setattr__(self, name, value)

    # ----------------------------------------------------------------------------------------
    # Validation
    # ----------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Check every field, then the rules that involve several fields.

        Also fills in the values that Hugging Face derives from other fields, unless they were
        set explicitly:

        * ``eval_steps`` defaults to ``logging_steps`` when ``eval_strategy == "steps"``;
        * ``metric_for_best_model`` defaults to ``"loss"`` when something needs a "best"
          checkpoint (``load_best_model_at_end``, ``save_strategy="best"`` or
          ``tracker_artifacts="best"``);
        * ``greater_is_better`` defaults to ``not metric_for_best_model.endswith("loss")``.

        Values filled in this way are recomputed on each call, so reassigning e.g.
        ``metric_for_best_model`` after construction also updates ``greater_is_better``.

        Raises:
            TypeError: a field has the wrong type.
            ValueError: a field has a bad value, or fields contradict each other.
        """
        state = self.__dict__
        inferred = state.get("_inferred", frozenset())

        # 1. single-field checks (catches in-place edits such as args.report_to.append(1))
        for name, check in _FIELD_CHECKS.items():
            if name in inferred:
                continue
            current = state[name]
            checked = check(current)
            if checked is not current:
                object.__setattr__(self, name, checked)

        # 2. derived values (computed into locals; committed only if every check passes)
        new_inferred: set[str] = set()

        eval_steps = None if "eval_steps" in inferred else self.eval_steps
        if self.eval_strategy == "steps" and eval_steps is None:
            if self.logging_steps > 0:
                eval_steps = self.logging_steps
                new_inferred.add("eval_steps")
            else:
                raise ValueError(
                    f"{_CLS}.eval_strategy='steps' needs eval_steps > 0, or logging_steps > 0 to "
                    f"default it from, but got eval_steps=None and "
                    f"logging_steps={self.logging_steps!r}"
                )

        metric = None if "metric_for_best_model" in inferred else self.metric_for_best_model
        needs_best = (
            self.load_best_model_at_end
            or self.save_strategy == "best"
            or self.tracker_artifacts == "best"
        )
        if needs_best and metric is None:
            metric = "loss"
            new_inferred.add("metric_for_best_model")

        greater = None if "greater_is_better" in inferred else self.greater_is_better
        if greater is None and metric is not None:
            greater = not metric.endswith("loss")
            new_inferred.add("greater_is_better")

        # 3. cross-field rules
        self._check_cross_fields(eval_steps)

        # 4. commit
        object.__setattr__(self, "eval_steps", eval_steps)
        object.__setattr__(self, "metric_for_best_model", metric)
        object.__setattr__(self, "greater_is_better", greater)
        object.__setattr__(self, "_inferred", frozenset(new_inferred))

    def _check_cross_fields(self, eval_steps: float | None) -> None:
        if self.fp16 and self.bf16:
            raise ValueError(
                f"{_CLS}.fp16=True and {_CLS}.bf16=True are not allowed together; "
                "enable at most one of fp16 and bf16"
            )

        if self.max_steps == -1 and self.num_train_epochs == 0:
            raise ValueError(
                f"{_CLS}.num_train_epochs={self.num_train_epochs!r} with max_steps=-1 would "
                "train for zero steps; set num_train_epochs > 0 or max_steps > 0"
            )

        if self.logging_strategy == "steps" and self.logging_steps == 0:
            raise ValueError(
                f"{_CLS}.logging_steps={self.logging_steps!r} is not allowed with "
                "logging_strategy='steps'; expected logging_steps > 0 (or logging_strategy "
                "'no' / 'epoch')"
            )

        if self.save_strategy == "steps" and self.save_steps == 0:
            raise ValueError(
                f"{_CLS}.save_steps={self.save_steps!r} is not allowed with save_strategy='steps'; "
                "expected save_steps > 0 (or save_strategy 'no' / 'epoch' / 'best')"
            )

        if self.save_strategy == "best" and self.eval_strategy == "no":
            raise ValueError(
                f"{_CLS}.save_strategy='best' needs evaluation to pick the best checkpoint, but "
                "eval_strategy='no'; set eval_strategy to 'steps' or 'epoch'"
            )

        if self.load_best_model_at_end:
            self._check_load_best(eval_steps)

        if self.tracker_artifacts in ("checkpoint", "best", "last") and self.save_strategy == "no":
            raise ValueError(
                f"{_CLS}.tracker_artifacts={self.tracker_artifacts!r} uploads saved checkpoints, "
                "but save_strategy='no' saves none; set save_strategy to 'steps', 'epoch' or "
                "'best', or use tracker_artifacts 'end' or 'none'"
            )
        if self.tracker_artifacts == "best" and self.eval_strategy == "no":
            raise ValueError(
                f"{_CLS}.tracker_artifacts='best' needs evaluation to pick the best checkpoint, "
                "but eval_strategy='no'; set eval_strategy to 'steps' or 'epoch'"
            )

    def _check_load_best(self, eval_steps: float | None) -> None:
        if self.eval_strategy == "no":
            raise ValueError(
                f"{_CLS}.load_best_model_at_end=True needs evaluation, but eval_strategy='no'; "
                "set eval_strategy to 'steps' or 'epoch'"
            )
        if self.save_strategy == "best":
            return
        if self.save_strategy != self.eval_strategy:
            raise ValueError(
                f"{_CLS}.load_best_model_at_end=True requires save_strategy to match "
                f"eval_strategy (or save_strategy='best'), but got "
                f"eval_strategy={self.eval_strategy!r} and save_strategy={self.save_strategy!r}"
            )
        if self.eval_strategy != "steps" or eval_steps is None:
            return
        save_steps = self.save_steps
        if (save_steps < 1) != (eval_steps < 1):
            raise ValueError(
                f"{_CLS}.load_best_model_at_end=True requires save_steps to be a round multiple "
                f"of eval_steps, which cannot be guaranteed when one is a fraction and the other "
                f"a step count: save_steps={save_steps!r}, eval_steps={eval_steps!r}"
            )
        ratio = save_steps / eval_steps
        if ratio < 1 or not math.isclose(ratio, round(ratio), rel_tol=1e-9, abs_tol=1e-9):
            raise ValueError(
                f"{_CLS}.load_best_model_at_end=True requires save_steps to be a round multiple "
                f"of eval_steps, but save_steps={save_steps!r} is not a multiple of "
                f"eval_steps={eval_steps!r}"
            )

    # ----------------------------------------------------------------------------------------
    # Derived values
    # ----------------------------------------------------------------------------------------

    @property
    def strict_trackers(self) -> bool:
        """Resolved ``tracker_strict``: the field when set, else env ``TRACKMUX_STRICT``.

        The environment variable is read on every access; ``1``, ``true``, ``yes`` and ``on``
        (any case) mean strict, anything else (or unset) means not strict.
        """
        if self.tracker_strict is not None:
            return self.tracker_strict
        return os.environ.get(STRICT_ENV_VAR, "").strip().lower() in TRUTHY_ENV_VALUES

    @property
    def train_batch_size(self) -> int:
        """Batch size of one training step on this process (``per_device_train_batch_size``)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """Batch size used for evaluation on this process (``per_device_eval_batch_size``)."""
        return self.per_device_eval_batch_size

    @property
    def world_size(self) -> int:
        """Number of processes, from env ``WORLD_SIZE`` (default 1)."""
        return _env_int("WORLD_SIZE", 1, 1)

    @property
    def process_index(self) -> int:
        """Global rank of this process, from env ``RANK`` (default 0)."""
        return _env_int("RANK", 0, 0)

    @property
    def local_process_index(self) -> int:
        """Rank of this process on its machine, from env ``LOCAL_RANK`` (default 0)."""
        return _env_int("LOCAL_RANK", 0, 0)

    @property
    def is_main_process(self) -> bool:
        """Whether this is the main process (``process_index == 0``)."""
        return self.process_index == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints (only the main process does)."""
        return self.is_main_process

    @property
    def device(self) -> torch.device:
        """The ``torch.device`` this process trains on.

        ``cuda`` when CUDA is available and ``use_cpu`` is false (``cuda:<LOCAL_RANK>`` when
        ``world_size > 1``), otherwise ``cpu``. Imports ``torch`` on first use.
        """
        import torch

        if not self.use_cpu and torch.cuda.is_available():
            if self.world_size > 1:
                return torch.device("cuda", self.local_process_index)
            return torch.device("cuda")
        return torch.device("cpu")

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Number of warmup steps for a run of ``num_training_steps`` optimisation steps.

        ``warmup_steps`` when it is > 0, else ``ceil(warmup_ratio * num_training_steps)``.
        """
        if not _is_int(num_training_steps) or num_training_steps < 0:
            raise ValueError(
                f"get_warmup_steps: num_training_steps={num_training_steps!r} is not allowed; "
                "expected an int >= 0"
            )
        if self.warmup_steps > 0:
            return self.warmup_steps
        return _ceil(self.warmup_ratio * num_training_steps)

    # ----------------------------------------------------------------------------------------
    # Serialisation
    # ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (lists are copied)."""
        result: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, (list, tuple)):
                value = list(value)
            result[f.name] = value
        return result

    def to_json_string(self) -> str:
        """:meth:`to_dict` as a JSON string (indented by 2, as in Hugging Face)."""
        return json.dumps(self.to_dict(), indent=2)
