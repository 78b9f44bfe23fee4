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
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .hf_fields import FIELDS, REFUSED
from .lr_schedules import METRIC_DRIVEN, SCHEDULER_TYPES
from .optimizers import OPTIMIZER_NAMES

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "INCLUDE_TOKENS_CHOICES",
    "INTERVAL_STRATEGIES",
    "JOURNAL_ERROR_MODES",
    "LOG_LEVELS",
    "OPTIMIZER_NAMES",
    "SAVE_STRATEGIES",
    "SCHEDULER_TYPES",
    "STRICT_ENV_VAR",
    "TRACKER_ARTIFACT_POLICIES",
    "TRUTHY_ENV_VALUES",
    "TrainingArguments",
    "resolve_steps",
]

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

LOG_LEVELS: tuple[str, ...] = ("passive", "detail", "debug", "info", "warning", "error", "critical")
"""Allowed values of ``log_level`` and ``log_level_replica`` (``passive`` leaves it alone)."""

INCLUDE_TOKENS_CHOICES: tuple[str, ...] = ("no", "all", "non_padding")
"""Allowed values of ``include_num_input_tokens_seen`` (``True``/``False`` mean all/no)."""

_DDP_BACKENDS = ("nccl", "gloo", "mpi", "xccl", "hccl", "cncl", "mccl")
_START_METHODS = ("fork", "spawn", "forkserver")

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


def _check_str_list(name: str) -> Checker:
    expected = "None or a list of str"

    def check(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return list(value)
        raise _type_error(name, value, expected)

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


def _check_optional_choice(name: str, choices: Sequence[str]) -> Checker:
    check_choice = _check_choice(name, choices)
    return lambda value: None if value is None else check_choice(value)


def _check_kwargs(name: str) -> Checker:
    """A dict of keyword arguments; a JSON object string (from a command line) is parsed, as
    transformers does."""
    expected = "None, a dict or a JSON object string"

    def check(value: Any) -> Any:
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                parsed = json.loads(value)
            except ValueError as error:
                raise ValueError(
                    f"{_CLS}.{name}={value!r} is not valid JSON ({error}); pass a dict"
                ) from None
            if isinstance(parsed, dict):
                return parsed
        raise _type_error(name, value, expected)

    return check


def _check_str_list(name: str) -> Checker:
    def check(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
            return list(value)
        raise _type_error(name, value, "None or a list of str")

    return check


def _check_warmup_steps(value: Any) -> Any:
    expected = (
        "a number >= 0: a whole number of steps, or a fraction in (0, 1) of the training steps"
    )
    if not _is_real(value):
        raise _type_error("warmup_steps", value, expected)
    if not math.isfinite(value) or value < 0 or (value >= 1 and value != int(value)):
        raise _value_error("warmup_steps", value, expected)
    return int(value) if value >= 1 or _is_int(value) else float(value)


def _check_include_tokens(value: Any) -> Any:
    if isinstance(value, bool):  # transformers' older spelling
        return "all" if value else "no"
    return _check_choice("include_num_input_tokens_seen", INCLUDE_TOKENS_CHOICES)(value)


def _check_optional_str_or_false(name: str) -> Checker:
    def check(value: Any) -> Any:
        if value is None or value is False or isinstance(value, str):
            return value
        raise _type_error(name, value, "None, False or a str")

    return check


def _check_any(value: Any) -> Any:
    return value


def _shown(name: str, value: Any) -> str:
    """A value for an error message: a token is never printed."""
    return "<redacted>" if name.endswith("_token") and value is not None else repr(value)


def _check_refused(name: str, check: Checker = _check_any) -> Checker:
    """A field transformers has and trackmux cannot apply: its default passes, any other
    value fails with the reason and what to do instead (see :mod:`trackmux.hf_fields`)."""

    def refuse(value: Any) -> Any:
        value = check(value)
        default = _default_of(name)
        if name.endswith("_token") and value == f"<{name.upper()}>":
            return default  # to_dict()'s placeholder: no token was given
        # an empty value stands for an empty default: transformers itself turns debug="" into
        # [], so arguments copied from its to_dict() still pass
        if value == default or (value in _EMPTY and default in _EMPTY):
            return value
        raise ValueError(
            f"{_CLS}.{name}={_shown(name, value)} is not supported by trackmux: {FIELDS[name].note}"
        )

    return refuse


_EMPTY = (None, "", [], {})


def _default_of(name: str) -> Any:
    # the class object itself, bound once it exists: the module attribute may be wrapped
    # (functools.partial in a test, a subclass in user code)
    field = _ARGUMENTS_CLASS.__dataclass_fields__[name]
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


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
    "warmup_steps": _check_warmup_steps,
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
    "run_journal": _check_bool("run_journal"),
    "stop_on_nonfinite_loss": _check_bool("stop_on_nonfinite_loss"),
    # --- the rest of transformers' fields (see trackmux.hf_fields for what each does) ---
    "lr_scheduler_kwargs": _check_kwargs("lr_scheduler_kwargs"),
    "optim": _check_choice("optim", OPTIMIZER_NAMES),
    "optim_args": _check_optional_str("optim_args"),
    "average_tokens_across_devices": _check_bool("average_tokens_across_devices"),
    "tf32": _check_bool("tf32", optional=True),
    "activation_checkpointing": _check_bool("activation_checkpointing", optional=True),
    "activation_checkpointing_kwargs": _check_kwargs("activation_checkpointing_kwargs"),
    "gradient_checkpointing": _check_bool("gradient_checkpointing", optional=True),
    "gradient_checkpointing_kwargs": _check_kwargs("gradient_checkpointing_kwargs"),
    "torch_compile": _check_bool("torch_compile"),
    "torch_compile_backend": _check_optional_str("torch_compile_backend"),
    "torch_compile_mode": _check_optional_str("torch_compile_mode"),
    "use_cache": _check_bool("use_cache"),
    "torch_empty_cache_steps": _check_int("torch_empty_cache_steps", low=1, optional=True),
    "log_on_each_node": _check_bool("log_on_each_node"),
    "logging_nan_inf_filter": _check_bool("logging_nan_inf_filter"),
    "include_num_input_tokens_seen": _check_include_tokens,
    "log_level": _check_choice("log_level", LOG_LEVELS),
    "log_level_replica": _check_choice("log_level_replica", LOG_LEVELS),
    "eval_delay": _check_float("eval_delay", low=0),
    "prediction_loss_only": _check_bool("prediction_loss_only"),
    "eval_on_start": _check_bool("eval_on_start"),
    "eval_accumulation_steps": _check_int("eval_accumulation_steps", low=1, optional=True),
    "save_on_each_node": _check_bool("save_on_each_node"),
    "save_only_model": _check_bool("save_only_model"),
    "restore_callback_states_from_checkpoint": _check_bool(
        "restore_callback_states_from_checkpoint"
    ),
    "full_determinism": _check_bool("full_determinism"),
    "data_seed": _check_int(
        "data_seed", low=0, high=_SEED_LIMIT, high_inclusive=False, optional=True
    ),
    "dataloader_drop_last": _check_bool("dataloader_drop_last"),
    "dataloader_pin_memory": _check_bool("dataloader_pin_memory"),
    "dataloader_persistent_workers": _check_bool("dataloader_persistent_workers"),
    "dataloader_prefetch_factor": _check_int("dataloader_prefetch_factor", low=1, optional=True),
    "dataloader_multiprocessing_context": _check_optional_choice(
        "dataloader_multiprocessing_context", _START_METHODS
    ),
    "dataloader_in_order": _check_bool("dataloader_in_order"),
    "remove_unused_columns": _check_bool("remove_unused_columns"),
    "label_names": _check_str_list("label_names"),
    "ddp_find_unused_parameters": _check_bool("ddp_find_unused_parameters", optional=True),
    "ddp_bucket_cap_mb": _check_int("ddp_bucket_cap_mb", low=1, optional=True),
    "ddp_broadcast_buffers": _check_bool("ddp_broadcast_buffers", optional=True),
    "ddp_static_graph": _check_bool("ddp_static_graph", optional=True),
    "ddp_backend": _check_optional_choice("ddp_backend", _DDP_BACKENDS),
    "ddp_timeout": _check_int("ddp_timeout", low=1),
    "do_train": _check_bool("do_train"),
    "do_eval": _check_bool("do_eval"),
    "do_predict": _check_bool("do_predict"),
    "local_rank": _check_int("local_rank", low=-1),
    "transformers_flow": _check_bool("transformers_flow"),
    **{name: _check_refused(name) for name, status in FIELDS.items() if status.status == REFUSED},
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


def _check_bf16_device() -> None:
    """bf16 without ``use_cpu`` needs a GPU that computes in bfloat16; transformers refuses
    the arguments otherwise, and so does this (the check imports torch, only then)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return
    raise ValueError(
        f"{_CLS}.bf16=True needs a GPU with bfloat16 support and this machine has none; set "
        "use_cpu=True to train in bfloat16 on the CPU, or bf16=False (as transformers, which "
        "refuses these arguments too)"
    )


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
    output_dir: str | None = "trainer_output"
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
    warmup_steps: float = 0
    warmup_ratio: float = 0.0
    lr_scheduler_kwargs: dict[str, Any] | str | None = None
    optim: str = "adamw_torch_fused"
    optim_args: str | None = None
    optim_target_modules: str | list[str] | None = None
    label_smoothing_factor: float = 0.0

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
    run_journal: bool = True
    stop_on_nonfinite_loss: bool = False

    # --- transformers' other fields: see trackmux.hf_fields (and the migration page) for
    # what each does here; refused ones only accept their default ---
    average_tokens_across_devices: bool = True
    bf16_full_eval: bool = False
    fp16_full_eval: bool = False
    tf32: bool | None = None
    activation_checkpointing: bool | None = None
    activation_checkpointing_kwargs: dict[str, Any] | str | None = None
    gradient_checkpointing: bool | None = None
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = None
    torch_compile: bool = False
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    use_liger_kernel: bool = False
    liger_kernel_config: dict[str, bool] | None = None
    use_cache: bool = False
    neftune_noise_alpha: float | None = None
    torch_empty_cache_steps: int | None = None
    auto_find_batch_size: bool = False
    log_on_each_node: bool = True
    logging_nan_inf_filter: bool = True
    include_num_input_tokens_seen: str | bool = "no"
    log_level: str = "passive"
    log_level_replica: str = "warning"
    project: str = "huggingface"
    trackio_space_id: str | None = None
    trackio_bucket_id: str | None = None
    trackio_static_space_id: str | None = None
    eval_delay: float = 0
    prediction_loss_only: bool = False
    eval_on_start: bool = False
    eval_do_concat_batches: bool = True
    eval_use_gather_object: bool = False
    eval_accumulation_steps: int | None = None
    include_for_metrics: list[str] = dataclasses.field(default_factory=list)
    batch_eval_metrics: bool = False
    save_only_model: bool = False
    save_on_each_node: bool = False
    enable_jit_checkpoint: bool = False
    push_to_hub: bool = False
    hub_token: str | None = None
    hub_private_repo: bool | None = None
    hub_model_id: str | None = None
    hub_strategy: str = "every_save"
    hub_always_push: bool = False
    hub_revision: str | None = None
    ignore_data_skip: bool = False
    restore_callback_states_from_checkpoint: bool = False
    full_determinism: bool = False
    data_seed: int | None = None
    accelerator_config: dict | str | None = None
    parallelism_config: Any = None
    dataloader_drop_last: bool = False
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    dataloader_prefetch_factor: int | None = None
    dataloader_multiprocessing_context: str | None = None
    dataloader_in_order: bool = True
    remove_unused_columns: bool = True
    label_names: list[str] | None = None
    train_sampling_strategy: str = "random"
    length_column_name: str = "length"
    ddp_find_unused_parameters: bool | None = None
    ddp_bucket_cap_mb: int | None = None
    ddp_broadcast_buffers: bool | None = None
    ddp_static_graph: bool | None = None
    ddp_backend: str | None = None
    ddp_timeout: int = 1800
    fsdp: str | list | None = None
    fsdp_config: dict[str, Any] | str | None = None
    deepspeed: dict | str | None = None
    debug: str | list = ""
    skip_memory_metrics: bool = True
    do_train: bool = False
    do_eval: bool = False
    do_predict: bool = False
    local_rank: int = -1
    # trackmux's switch back to transformers' exact event sequence (migration page)
    transformers_flow: bool = False

    # ----------------------------------------------------------------------------------------

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inferred", frozenset())
        self._derive_as_transformers()
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

    def _derive_as_transformers(self) -> None:
        """What transformers' ``__post_init__`` fills in once, at construction."""
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        if self.disable_tqdm is None:  # transformers: from its log level; trackmux: shown
            self.disable_tqdm = False
        # gradient_checkpointing* are transformers' deprecated aliases of activation_*
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
            setattr(self, old, getattr(self, new))
        if self.activation_checkpointing is None:
            self.activation_checkpointing = self.gradient_checkpointing = False
        if self.eval_strategy != "no" and not self.do_eval:
            self.do_eval = True
        if (self.torch_compile_mode is not None or self.torch_compile_backend is not None) and (
            not self.torch_compile
        ):
            self.torch_compile = True
        if self.torch_compile and self.torch_compile_backend is None:
            self.torch_compile_backend = "inductor"
        if self.use_cpu:
            self.dataloader_pin_memory = False

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
            or self.lr_scheduler_type in METRIC_DRIVEN
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
        if self.lr_scheduler_type in METRIC_DRIVEN and self.eval_strategy == "no":
            raise ValueError(
                f"{_CLS}.lr_scheduler_type={self.lr_scheduler_type!r} steps on an evaluation "
                "metric, but eval_strategy='no'; set eval_strategy to 'steps' or 'epoch'"
            )
        if self.dataloader_num_workers == 0:
            for name in ("dataloader_prefetch_factor", "dataloader_persistent_workers"):
                if getattr(self, name):
                    raise ValueError(
                        f"{_CLS}.{name}={getattr(self, name)!r} needs worker processes, but "
                        "dataloader_num_workers=0; set dataloader_num_workers > 0 or leave "
                        f"{name} at its default"
                    )
        if self.fp16 and self.bf16:
            raise ValueError(
                f"{_CLS}.fp16=True and {_CLS}.bf16=True are not allowed together; "
                "enable at most one of fp16 and bf16"
            )
        if self.bf16 and not self.use_cpu:
            _check_bf16_device()

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
        """Whether this process writes checkpoints: the main process, or with
        ``save_on_each_node`` the first process of each machine."""
        if self.save_on_each_node:
            return self.local_process_index == 0
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

        ``warmup_steps`` when it is >= 1, ``ceil(warmup_steps * num_training_steps)`` when it
        is a fraction (transformers 5), else ``ceil(warmup_ratio * num_training_steps)``.
        """
        if not _is_int(num_training_steps) or num_training_steps < 0:
            raise ValueError(
                f"get_warmup_steps: num_training_steps={num_training_steps!r} is not allowed; "
                "expected an int >= 0"
            )
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        ratio = self.warmup_steps if self.warmup_steps > 0 else self.warmup_ratio
        return _ceil(ratio * num_training_steps)

    # ----------------------------------------------------------------------------------------
    # Serialisation
    # ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-serialisable dict (lists are copied); a ``*_token`` field is
        replaced by its placeholder (``"<HUB_TOKEN>"``), as in transformers, so no credential
        is ever written; the placeholder reads back as no token."""
        result: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_token"):
                value = f"<{f.name.upper()}>"
            elif isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, (list, tuple)):
                value = list(value)
            result[f.name] = value
        return result

    def to_sanitized_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` plus ``train_batch_size`` and ``eval_batch_size``, every value that
        is not a bool, int, float, str or tensor turned into its ``str`` (what transformers
        hands to TensorBoard's hparams)."""
        result = {
            **self.to_dict(),
            "train_batch_size": self.train_batch_size,
            "eval_batch_size": self.eval_batch_size,
        }
        torch = sys.modules.get("torch")  # a tensor can only be here if torch is loaded
        kept: tuple[type, ...] = (bool, int, float, str)
        if torch is not None:
            kept = (*kept, torch.Tensor)
        return {k: v if type(v) in kept else str(v) for k, v in result.items()}

    def to_json_string(self) -> str:
        """:meth:`to_dict` as a JSON string (indented by 2, as in Hugging Face)."""
        return json.dumps(self.to_dict(), indent=2)


_ARGUMENTS_CLASS = TrainingArguments
