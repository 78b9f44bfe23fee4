"""Tests for trackmux.training_args."""

from __future__ import annotations

import copy
import dataclasses
import enum
import json
import os
import pathlib
import pickle
import re
import sys

import pytest

from trackmux.hf_fields import FIELDS
from trackmux.testing import describe_child, run_child
from trackmux.training_args import (
    INTERVAL_STRATEGIES,
    SAVE_STRATEGIES,
    SCHEDULER_TYPES,
    TRACKER_ARTIFACT_POLICIES,
    TrainingArguments,
    resolve_steps,
)

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"

# Hugging Face transformers.TrainingArguments defaults for the fields we share.
HF_DEFAULTS = {
    "output_dir": "trainer_output",
    "overwrite_output_dir": False,
    "num_train_epochs": 3.0,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5e-5,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "warmup_ratio": 0.0,
    "logging_strategy": "steps",
    "logging_steps": 500,
    "logging_first_step": False,
    "eval_strategy": "no",
    "eval_steps": None,
    "save_strategy": "steps",
    "save_steps": 500,
    "save_total_limit": None,
    "load_best_model_at_end": False,
    "metric_for_best_model": None,
    "greater_is_better": None,
    "seed": 42,
    "run_name": None,
    "report_to": "all",
    "use_cpu": False,
    "bf16": False,
    "fp16": False,
    "dataloader_num_workers": 0,
    "resume_from_checkpoint": None,
    # issue 16 loop fields
    "label_names": None,
    "data_seed": None,
    "eval_accumulation_steps": None,
    "prediction_loss_only": False,
    "remove_unused_columns": True,
    "dataloader_drop_last": False,
}

TRACKMUX_DEFAULTS = {
    "disable_tqdm": False,
    "tracker_strict": None,
    "tracker_artifacts": "none",
    "tracker_queue_size": 10000,
    "tracker_close_timeout": 30.0,
    "tracker_stall_timeout": 300.0,
    "tracker_delivery": None,
    "save_on_interrupt": False,
    "journal_errors": "retry",
    "run_journal": True,
    "stop_on_nonfinite_loss": False,
    "transformers_flow": False,  # issue 16 loop fields
}

# Arguments that make load_best_model_at_end valid.
LOAD_BEST = {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "steps"}


def raises(exc: type[Exception], *parts: str):
    """pytest.raises matching every part (literally, in order) in the message."""
    return pytest.raises(exc, match=".*".join(re.escape(p) for p in parts))


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("TRACKMUX_STRICT", "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------
# Defaults and field set
# --------------------------------------------------------------------------------------------


def test_defaults_match_hugging_face():
    args = TrainingArguments()
    for name, expected in HF_DEFAULTS.items():
        assert getattr(args, name) == expected, name
        assert type(getattr(args, name)) is type(expected), name


def test_trackmux_only_defaults():
    args = TrainingArguments()
    for name, expected in TRACKMUX_DEFAULTS.items():
        assert getattr(args, name) == expected, name


def test_field_set_and_order():
    names = [f.name for f in dataclasses.fields(TrainingArguments)]
    # every field has a status against transformers (tests/frameworks compares the set with
    # the installed transformers)
    assert set(names) == set(FIELDS)
    assert set(HF_DEFAULTS) | set(TRACKMUX_DEFAULTS) <= set(names)
    assert names[0] == "output_dir"
    tracker_block = names.index("tracker_strict")
    assert names[tracker_block : tracker_block + 10] == [
        "tracker_strict",
        "tracker_artifacts",
        "tracker_queue_size",
        "tracker_close_timeout",
        "tracker_stall_timeout",
        "tracker_delivery",
        "save_on_interrupt",
        "journal_errors",
        "run_journal",
        "stop_on_nonfinite_loss",
    ]


def test_choice_constants():
    assert SCHEDULER_TYPES[:2] == ("linear", "cosine")
    assert {"constant", "constant_with_warmup", "polynomial", "inverse_sqrt"} <= set(
        SCHEDULER_TYPES
    )
    assert INTERVAL_STRATEGIES == ("no", "steps", "epoch")
    assert SAVE_STRATEGIES == ("no", "steps", "epoch", "best")
    assert TRACKER_ARTIFACT_POLICIES == ("none", "end", "checkpoint", "best", "last")


def test_import_does_not_import_torch():
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    code = (
        "import sys, trackmux.training_args as m; "
        "m.TrainingArguments(); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = run_child([sys.executable, "-c", code], env=env, check=False)
    assert result.returncode == 0, describe_child(result)


# --------------------------------------------------------------------------------------------
# Accepted values
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SCHEDULER_TYPES)
def test_every_scheduler_type_is_accepted(name):
    args = TrainingArguments(lr_scheduler_type=name, eval_strategy="epoch")
    assert args.lr_scheduler_type == name


@pytest.mark.parametrize("name", ["logging_strategy", "eval_strategy"])
@pytest.mark.parametrize("value", INTERVAL_STRATEGIES)
def test_every_interval_strategy_is_accepted(name, value):
    assert getattr(TrainingArguments(**{name: value}), name) == value


@pytest.mark.parametrize("value", SAVE_STRATEGIES)
def test_every_save_strategy_is_accepted(value):
    args = TrainingArguments(save_strategy=value, eval_strategy="epoch")
    assert args.save_strategy == value


@pytest.mark.parametrize("value", TRACKER_ARTIFACT_POLICIES)
def test_every_artifact_policy_is_accepted(value):
    args = TrainingArguments(tracker_artifacts=value, eval_strategy="steps")
    assert args.tracker_artifacts == value


def test_ints_accepted_for_floats_and_stored_as_float():
    args = TrainingArguments(
        num_train_epochs=2,
        learning_rate=1,
        weight_decay=0,
        adam_beta1=0,
        adam_epsilon=0,
        max_grad_norm=5,
        warmup_ratio=0,
        tracker_close_timeout=1,
    )
    assert args.num_train_epochs == 2.0
    assert type(args.num_train_epochs) is float
    assert type(args.learning_rate) is float
    assert type(args.max_grad_norm) is float
    assert type(args.tracker_close_timeout) is float


def test_max_grad_norm_none_or_zero_allowed():
    assert TrainingArguments(max_grad_norm=None).max_grad_norm is None
    assert TrainingArguments(max_grad_norm=0).max_grad_norm == 0.0


def test_pathlike_paths_become_str():
    args = TrainingArguments(
        output_dir=pathlib.Path("out"), resume_from_checkpoint=pathlib.Path("c")
    )
    assert args.output_dir == "out"
    assert type(args.output_dir) is str
    assert args.resume_from_checkpoint == "c"


def test_output_dir_expands_user_as_hf(monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone")
    assert TrainingArguments(output_dir="~/runs").output_dir == "/home/someone/runs"
    args = TrainingArguments()
    args.output_dir = "~/other"
    assert args.output_dir == "/home/someone/other"


def test_str_enum_choice_is_stored_as_plain_str():
    class Strategy(str, enum.Enum):
        EPOCH = "epoch"

    args = TrainingArguments(eval_strategy=Strategy.EPOCH)
    assert args.eval_strategy == "epoch"
    assert type(args.eval_strategy) is str


def test_steps_whole_floats_become_int_and_fractions_stay_float():
    args = TrainingArguments(logging_steps=10.0, save_steps=0.25, eval_steps=1.0)
    assert args.logging_steps == 10
    assert type(args.logging_steps) is int
    assert args.save_steps == 0.25
    assert args.eval_steps == 1
    assert type(args.eval_steps) is int


# --------------------------------------------------------------------------------------------
# Rejected values: message names the field, shows repr(value), says what is allowed
# --------------------------------------------------------------------------------------------

BAD_VALUES = [
    # (field, value, exception, expected text describing what is allowed)
    ("output_dir", "", ValueError, "non-empty str"),
    ("output_dir", 3, TypeError, "non-empty str"),
    ("overwrite_output_dir", "yes", TypeError, "a bool (True or False)"),
    ("num_train_epochs", -1, ValueError, "finite number >= 0"),
    ("num_train_epochs", float("nan"), ValueError, "finite number >= 0"),
    ("num_train_epochs", "3", TypeError, "pass a number, not a string"),
    ("max_steps", 0, ValueError, "-1 (train for num_train_epochs) or an int > 0"),
    ("max_steps", -5, ValueError, "-1 (train for num_train_epochs) or an int > 0"),
    ("max_steps", 10.0, TypeError, "an int > 0"),
    ("per_device_train_batch_size", 0, ValueError, "an int >= 1"),
    ("per_device_train_batch_size", True, TypeError, "an int >= 1"),
    ("per_device_train_batch_size", 8.0, TypeError, "an int >= 1"),
    ("per_device_eval_batch_size", -2, ValueError, "an int >= 1"),
    ("gradient_accumulation_steps", 0, ValueError, "an int >= 1"),
    ("learning_rate", -1, ValueError, "finite number >= 0"),
    ("learning_rate", "5e-5", TypeError, "pass a number, not a string"),
    ("learning_rate", True, TypeError, "finite number >= 0"),
    ("learning_rate", float("inf"), ValueError, "finite number >= 0"),
    ("weight_decay", -0.01, ValueError, "finite number >= 0"),
    ("adam_beta1", 1.0, ValueError, "finite number in [0, 1)"),
    ("adam_beta1", -0.1, ValueError, "finite number in [0, 1)"),
    ("adam_beta2", 1.5, ValueError, "finite number in [0, 1)"),
    ("adam_epsilon", -1e-8, ValueError, "finite number >= 0"),
    ("max_grad_norm", -1.0, ValueError, "None or a finite number >= 0"),
    ("warmup_steps", -1, ValueError, "a number >= 0"),
    ("warmup_steps", 2.5, ValueError, "a whole number of steps"),
    ("warmup_steps", "5", TypeError, "pass a number, not a string"),
    ("warmup_ratio", 1.0, ValueError, "finite number in [0, 1)"),
    ("warmup_ratio", -0.1, ValueError, "finite number in [0, 1)"),
    ("logging_steps", -1, ValueError, "a number >= 0"),
    ("logging_steps", 10.5, ValueError, "a value >= 1 must be a whole number of steps"),
    ("logging_steps", "10", TypeError, "pass a number, not a string"),
    ("logging_first_step", 1, TypeError, "a bool (True or False)"),
    ("eval_steps", 0, ValueError, "None or a number > 0"),
    ("eval_steps", -0.5, ValueError, "None or a number > 0"),
    ("save_steps", 2.5, ValueError, "a value >= 1 must be a whole number of steps"),
    ("save_total_limit", 0, ValueError, "None or an int >= 1"),
    ("save_total_limit", 1.0, TypeError, "None or an int >= 1"),
    ("load_best_model_at_end", "True", TypeError, "a bool (True or False)"),
    ("metric_for_best_model", 3, TypeError, "None or a str"),
    ("greater_is_better", "false", TypeError, "None or a bool (True or False)"),
    ("seed", -1, ValueError, "an int in [0, 4294967296)"),
    ("seed", 2**32, ValueError, "an int in [0, 4294967296)"),
    ("seed", 1.5, TypeError, "an int in [0, 4294967296)"),
    ("run_name", 1, TypeError, "None or a str"),
    ("report_to", 3, TypeError, "None, a str"),
    ("report_to", {"mlflow"}, TypeError, "a list of str"),
    ("use_cpu", "false", TypeError, "a bool (True or False)"),
    ("bf16", 1, TypeError, "a bool (True or False)"),
    ("fp16", "true", TypeError, "a bool (True or False)"),
    ("dataloader_num_workers", -1, ValueError, "an int >= 0"),
    ("resume_from_checkpoint", "", ValueError, "None or a non-empty str"),
    ("resume_from_checkpoint", 1, TypeError, "None or a non-empty str"),
    ("tracker_strict", "1", TypeError, "None or a bool (True or False)"),
    ("tracker_queue_size", 0, ValueError, "an int >= 1"),
    ("tracker_queue_size", True, TypeError, "an int >= 1"),
    ("tracker_close_timeout", 0, ValueError, "finite number > 0"),
    ("tracker_close_timeout", -3.0, ValueError, "finite number > 0"),
    ("tracker_stall_timeout", 0, ValueError, "finite number > 0"),
    ("tracker_delivery", "processes", ValueError, "choose one of 'process', 'thread'"),
    ("tracker_delivery", 1, TypeError, "one of 'process', 'thread'"),
]


@pytest.mark.parametrize(("name", "value", "exc", "allowed"), BAD_VALUES)
def test_bad_value_rejected_at_construction(name, value, exc, allowed):
    with raises(exc, f"TrainingArguments.{name}={value!r}", allowed):
        TrainingArguments(**{name: value})


@pytest.mark.parametrize(("name", "value", "exc", "allowed"), BAD_VALUES)
def test_bad_value_rejected_on_reassignment(name, value, exc, allowed):
    args = TrainingArguments()
    before = getattr(args, name)
    with raises(exc, f"TrainingArguments.{name}={value!r}", allowed):
        setattr(args, name, value)
    assert getattr(args, name) == before  # the bad value was not stored


def test_bool_field_string_hint_is_not_about_numbers():
    with pytest.raises(TypeError, match="fp16='1'") as info:
        TrainingArguments(fp16="1")
    assert "pass a number" not in str(info.value)


CHOICE_FIELDS = [
    ("lr_scheduler_type", SCHEDULER_TYPES, "cosin", "cosine"),
    ("lr_scheduler_type", SCHEDULER_TYPES, "Linear", "linear"),
    ("lr_scheduler_type", SCHEDULER_TYPES, "constant_warmup", "constant_with_warmup"),
    ("logging_strategy", INTERVAL_STRATEGIES, "step", "steps"),
    ("eval_strategy", INTERVAL_STRATEGIES, "epochs", "epoch"),
    ("eval_strategy", INTERVAL_STRATEGIES, "STEPS", "steps"),
    ("save_strategy", SAVE_STRATEGIES, "bets", "best"),
    ("tracker_artifacts", TRACKER_ARTIFACT_POLICIES, "checkpoints", "checkpoint"),
    ("tracker_artifacts", TRACKER_ARTIFACT_POLICIES, "lst", "last"),
]


@pytest.mark.parametrize(("name", "choices", "value", "suggestion"), CHOICE_FIELDS)
def test_choice_did_you_mean(name, choices, value, suggestion):
    listing = ", ".join(repr(c) for c in choices)
    with raises(
        ValueError,
        f"TrainingArguments.{name}={value!r} is not allowed; choose one of {listing}",
        f"(did you mean {suggestion!r}?)",
    ):
        TrainingArguments(**{name: value})


def test_choice_message_exact_form():
    with pytest.raises(ValueError, match="lr_scheduler_type") as info:
        TrainingArguments(lr_scheduler_type="cosin")
    assert str(info.value) == (
        "TrainingArguments.lr_scheduler_type='cosin' is not allowed; choose one of "
        + ", ".join(map(repr, SCHEDULER_TYPES))
        + " (did you mean 'cosine'?)"
    )


def test_choice_without_close_match_has_no_suggestion():
    with pytest.raises(ValueError, match="lr_scheduler_type='zzzzzz'") as info:
        TrainingArguments(lr_scheduler_type="zzzzzz")
    assert "did you mean" not in str(info.value)
    assert "'polynomial'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [("push_to_hub", True), ("deepspeed", "ds.json"), ("fsdp", "full_shard"), ("debug", "x")],
)
def test_a_field_that_cannot_apply_refuses_anything_but_its_default(name, value):
    with raises(ValueError, f"TrainingArguments.{name}={value!r}", "not supported by trackmux"):
        TrainingArguments(**{name: value})
    TrainingArguments(**{name: getattr(TrainingArguments(), name)})  # the default passes


def test_disable_tqdm_none_is_transformers_spelling_of_the_default():
    assert TrainingArguments(disable_tqdm=None).disable_tqdm is False


def test_a_refused_token_is_never_shown():
    with pytest.raises(ValueError, match="hub_token=<redacted>") as info:
        TrainingArguments(hub_token="hf_secret")
    assert "hf_secret" not in str(info.value)


def test_to_sanitized_dict_as_transformers():
    data = TrainingArguments(per_device_train_batch_size=4, label_names=["y"]).to_sanitized_dict()
    assert data["train_batch_size"] == 4 and data["eval_batch_size"] == 8
    assert data["label_names"] == "['y']" and data["eval_steps"] == "None"
    assert all(type(v) in (bool, int, float, str) for v in data.values())


def test_gradient_checkpointing_is_an_alias_as_in_transformers():
    args = TrainingArguments(gradient_checkpointing=True)
    assert args.activation_checkpointing is True and args.gradient_checkpointing is True
    assert TrainingArguments().gradient_checkpointing is False


def test_metric_driven_schedules_need_an_evaluation():
    with raises(ValueError, "lr_scheduler_type='reduce_lr_on_plateau'", "eval_strategy"):
        TrainingArguments(lr_scheduler_type="reduce_lr_on_plateau")
    args = TrainingArguments(lr_scheduler_type="greedy", eval_strategy="epoch")
    assert args.metric_for_best_model == "loss"  # what the schedule steps on, as in HF


def test_choice_wrong_type():
    with raises(TypeError, "TrainingArguments.eval_strategy=1", "one of 'no', 'steps', 'epoch'"):
        TrainingArguments(eval_strategy=1)


def test_report_to_bad_item_names_position():
    with raises(TypeError, "TrainingArguments.report_to=['mlflow', 1]", "item 1"):
        TrainingArguments(report_to=["mlflow", 1])


# --------------------------------------------------------------------------------------------
# report_to: type-checked only, never normalised
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["all", "none", "mlflow", None, [], ["none"], ["a", "b"]])
def test_report_to_stored_as_given(value):
    assert TrainingArguments(report_to=value).report_to == value


def test_report_to_tuple_stored_as_list_copy():
    source = ["mlflow"]
    args = TrainingArguments(report_to=("mlflow", "wandb"))
    assert args.report_to == ["mlflow", "wandb"]
    args = TrainingArguments(report_to=source)
    source.append("x")
    assert args.report_to == ["mlflow"]


def test_report_to_reassignment_after_construction():
    args = TrainingArguments()
    args.report_to = "none"
    assert args.report_to == "none"
    args.report_to = ("mlflow",)
    assert args.report_to == ["mlflow"]
    args.validate()
    assert args.report_to == ["mlflow"]


def test_validate_catches_in_place_mutation():
    args = TrainingArguments(report_to=["mlflow"])
    args.report_to.append(3)
    with raises(TypeError, "TrainingArguments.report_to=", "item 1"):
        args.validate()


# --------------------------------------------------------------------------------------------
# Reassignment
# --------------------------------------------------------------------------------------------


def test_reassignment_is_honoured_and_normalised():
    args = TrainingArguments()
    args.learning_rate = 1
    assert args.learning_rate == 1.0
    assert type(args.learning_rate) is float
    args.lr_scheduler_type = "cosine"
    assert args.lr_scheduler_type == "cosine"
    args.output_dir = pathlib.Path("elsewhere")
    assert args.output_dir == "elsewhere"
    args.logging_steps = 20.0
    assert args.logging_steps == 20
    assert type(args.logging_steps) is int


def test_reassignment_learning_rate_negative_raises_immediately():
    args = TrainingArguments()
    with raises(ValueError, "TrainingArguments.learning_rate=-1", ">= 0"):
        args.learning_rate = -1
    assert args.learning_rate == 5e-5


def test_reassignment_did_you_mean_fires_only_for_near_misses():
    args = TrainingArguments()
    with raises(AttributeError, "no field 'learnig_rate'", "did you mean 'learning_rate'?"):
        args.learnig_rate = 1e-3
    assert not hasattr(args, "learnig_rate")
    args.some_unrelated_attribute = 1  # not a near miss: allowed
    args._private = 2
    assert args.some_unrelated_attribute == 1
    assert args._private == 2


def test_cross_field_checks_run_at_validate_not_at_assignment():
    args = TrainingArguments(bf16=True, use_cpu=True)  # bf16 on a CPU needs use_cpu
    args.fp16 = True  # single-field fine
    with raises(ValueError, "fp16=True", "bf16=True", "at most one"):
        args.validate()
    args.bf16 = False
    args.validate()


def test_setattr_is_cheap_for_fields():
    # A crude guard against accidentally running validate() on each assignment.
    import timeit

    args = TrainingArguments()
    seconds = timeit.timeit(lambda: setattr(args, "learning_rate", 1e-3), number=20000)
    assert seconds < 1.0


def test_dataclass_replace_copy_and_pickle():
    args = TrainingArguments(learning_rate=1e-3, report_to=["mlflow"])
    replaced = dataclasses.replace(args, seed=7)
    assert replaced.seed == 7
    assert replaced.learning_rate == 1e-3
    with raises(ValueError, "TrainingArguments.seed=-7"):
        dataclasses.replace(args, seed=-7)
    for clone in (copy.copy(args), copy.deepcopy(args), pickle.loads(pickle.dumps(args))):
        assert clone == args
        with raises(ValueError, "learning_rate=-1"):
            clone.learning_rate = -1


# --------------------------------------------------------------------------------------------
# Cross-field rules
# --------------------------------------------------------------------------------------------


def test_fp16_and_bf16_together_rejected():
    with raises(ValueError, "fp16=True", "bf16=True", "at most one of fp16 and bf16"):
        TrainingArguments(fp16=True, bf16=True)
    assert TrainingArguments(fp16=True).fp16
    assert TrainingArguments(bf16=True, use_cpu=True).bf16


def test_zero_epochs_needs_max_steps():
    with raises(ValueError, "num_train_epochs=0.0", "max_steps > 0"):
        TrainingArguments(num_train_epochs=0)
    assert TrainingArguments(num_train_epochs=0, max_steps=10).max_steps == 10


def test_logging_steps_must_be_positive_for_steps_strategy():
    with raises(ValueError, "logging_steps=0", "logging_strategy='steps'", "> 0"):
        TrainingArguments(logging_steps=0)
    assert TrainingArguments(logging_steps=0, logging_strategy="epoch").logging_steps == 0


def test_save_steps_must_be_positive_for_steps_strategy():
    with raises(ValueError, "save_steps=0", "save_strategy='steps'", "> 0"):
        TrainingArguments(save_steps=0)
    assert TrainingArguments(save_steps=0, save_strategy="no").save_steps == 0


def test_eval_steps_defaults_to_logging_steps():
    args = TrainingArguments(eval_strategy="steps", logging_steps=25)
    assert args.eval_steps == 25
    assert TrainingArguments(eval_strategy="epoch").eval_steps is None
    assert TrainingArguments(eval_strategy="steps", eval_steps=7).eval_steps == 7


def test_eval_steps_default_follows_later_changes():
    args = TrainingArguments(eval_strategy="steps", logging_steps=25)
    args.logging_steps = 40
    args.validate()
    assert args.eval_steps == 40
    args.eval_strategy = "no"
    args.validate()
    assert args.eval_steps is None
    args.eval_steps = 3  # explicit now: kept
    args.eval_strategy = "steps"
    args.logging_steps = 9
    args.validate()
    assert args.eval_steps == 3


def test_eval_steps_needs_logging_steps_to_default_from():
    with raises(ValueError, "eval_strategy='steps'", "eval_steps=None", "logging_steps=0"):
        TrainingArguments(eval_strategy="steps", logging_strategy="no", logging_steps=0)


def test_save_strategy_best_needs_evaluation():
    with raises(ValueError, "save_strategy='best'", "eval_strategy='no'"):
        TrainingArguments(save_strategy="best")


def test_load_best_requires_evaluation():
    with raises(ValueError, "load_best_model_at_end=True", "eval_strategy='no'"):
        TrainingArguments(load_best_model_at_end=True)


def test_load_best_requires_matching_strategies():
    with raises(
        ValueError,
        "load_best_model_at_end=True requires save_strategy to match eval_strategy",
        "eval_strategy='epoch'",
        "save_strategy='steps'",
    ):
        TrainingArguments(load_best_model_at_end=True, eval_strategy="epoch")
    with raises(ValueError, "eval_strategy='steps'", "save_strategy='no'"):
        TrainingArguments(load_best_model_at_end=True, eval_strategy="steps", save_strategy="no")


def test_load_best_accepts_matching_or_best():
    assert TrainingArguments(**LOAD_BEST).load_best_model_at_end
    TrainingArguments(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="epoch")
    TrainingArguments(load_best_model_at_end=True, eval_strategy="epoch", save_strategy="best")
    TrainingArguments(
        load_best_model_at_end=True, eval_strategy="steps", save_strategy="best", save_steps=7
    )


@pytest.mark.parametrize(
    ("save_steps", "eval_steps"), [(500, 100), (100, 100), (1000, 250), (0.5, 0.25), (0.3, 0.1)]
)
def test_load_best_save_steps_round_multiple_ok(save_steps, eval_steps):
    args = TrainingArguments(**LOAD_BEST, save_steps=save_steps, eval_steps=eval_steps)
    assert args.save_steps == save_steps


@pytest.mark.parametrize(
    ("save_steps", "eval_steps"), [(300, 200), (100, 200), (0.25, 0.5), (0.5, 0.3)]
)
def test_load_best_save_steps_not_multiple(save_steps, eval_steps):
    with raises(
        ValueError,
        "save_steps to be a round multiple of eval_steps",
        f"save_steps={save_steps!r}",
        f"eval_steps={eval_steps!r}",
    ):
        TrainingArguments(**LOAD_BEST, save_steps=save_steps, eval_steps=eval_steps)


def test_load_best_save_steps_mixing_fraction_and_count():
    with raises(ValueError, "one is a fraction", "save_steps=0.5", "eval_steps=100"):
        TrainingArguments(**LOAD_BEST, save_steps=0.5, eval_steps=100)


def test_load_best_multiple_uses_inferred_eval_steps():
    with raises(ValueError, "save_steps=500", "eval_steps=200"):
        TrainingArguments(**LOAD_BEST, logging_steps=200)
    assert TrainingArguments(**LOAD_BEST, logging_steps=250).eval_steps == 250


def test_load_best_checked_again_at_validate():
    args = TrainingArguments(**LOAD_BEST)
    args.save_strategy = "epoch"
    with raises(ValueError, "save_strategy='epoch'"):
        args.validate()


# --------------------------------------------------------------------------------------------
# metric_for_best_model / greater_is_better
# --------------------------------------------------------------------------------------------


def test_metric_defaults_to_loss_with_load_best():
    args = TrainingArguments(**LOAD_BEST)
    assert args.metric_for_best_model == "loss"
    assert args.greater_is_better is False


def test_metric_not_inferred_without_need():
    args = TrainingArguments()
    assert args.metric_for_best_model is None
    assert args.greater_is_better is None


@pytest.mark.parametrize(
    ("metric", "expected"),
    [("loss", False), ("eval_loss", False), ("val_loss", False), ("accuracy", True), ("f1", True)],
)
def test_greater_is_better_inferred_from_metric_name(metric, expected):
    assert TrainingArguments(metric_for_best_model=metric).greater_is_better is expected


def test_explicit_greater_is_better_kept():
    args = TrainingArguments(metric_for_best_model="loss", greater_is_better=True)
    assert args.greater_is_better is True


def test_metric_inferred_for_save_best_and_tracker_best():
    args = TrainingArguments(save_strategy="best", eval_strategy="epoch")
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)
    args = TrainingArguments(tracker_artifacts="best", eval_strategy="epoch")
    assert (args.metric_for_best_model, args.greater_is_better) == ("loss", False)


def test_inferred_greater_is_better_follows_reassigned_metric():
    args = TrainingArguments(**LOAD_BEST)
    args.metric_for_best_model = "accuracy"
    args.validate()
    assert args.greater_is_better is True
    args.greater_is_better = False  # explicit now: kept
    args.metric_for_best_model = "bleu"
    args.validate()
    assert args.greater_is_better is False


def test_inferred_metric_dropped_when_no_longer_needed():
    args = TrainingArguments(**LOAD_BEST)
    args.load_best_model_at_end = False
    args.validate()
    assert args.metric_for_best_model is None
    assert args.greater_is_better is None


# --------------------------------------------------------------------------------------------
# tracker_* fields
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["checkpoint", "best", "last"])
def test_checkpoint_artifact_policies_need_saving(policy):
    with raises(ValueError, f"tracker_artifacts={policy!r}", "save_strategy='no'"):
        TrainingArguments(tracker_artifacts=policy, save_strategy="no", eval_strategy="epoch")


def test_end_and_none_policies_work_without_saving():
    assert TrainingArguments(tracker_artifacts="end", save_strategy="no").tracker_artifacts == "end"
    TrainingArguments(tracker_artifacts="none", save_strategy="no")


def test_best_artifact_policy_needs_evaluation():
    with raises(ValueError, "tracker_artifacts='best'", "eval_strategy='no'"):
        TrainingArguments(tracker_artifacts="best")


def test_strict_trackers_default_false(monkeypatch):
    assert TrainingArguments().strict_trackers is False


@pytest.mark.parametrize("raw", ["1", "true", "TRUE", "yes", "Yes", "on", " on "])
def test_strict_trackers_truthy_env(monkeypatch, raw):
    monkeypatch.setenv("TRACKMUX_STRICT", raw)
    assert TrainingArguments().strict_trackers is True


@pytest.mark.parametrize("raw", ["", "0", "false", "no", "off", "maybe", "2"])
def test_strict_trackers_falsy_env(monkeypatch, raw):
    monkeypatch.setenv("TRACKMUX_STRICT", raw)
    assert TrainingArguments().strict_trackers is False


def test_strict_trackers_field_overrides_env(monkeypatch):
    monkeypatch.setenv("TRACKMUX_STRICT", "1")
    assert TrainingArguments(tracker_strict=False).strict_trackers is False
    monkeypatch.setenv("TRACKMUX_STRICT", "0")
    assert TrainingArguments(tracker_strict=True).strict_trackers is True


def test_strict_trackers_reads_env_at_access_time(monkeypatch):
    args = TrainingArguments()
    assert args.strict_trackers is False
    monkeypatch.setenv("TRACKMUX_STRICT", "yes")
    assert args.strict_trackers is True
    args.tracker_strict = False
    assert args.strict_trackers is False


# --------------------------------------------------------------------------------------------
# resolve_steps / get_warmup_steps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "max_steps", "expected"),
    [
        (500, 1000, 500),
        (500, -1, 500),
        (1, 10, 1),
        (1.0, 10, 1),
        (0.1, 1000, 100),
        (0.07, 100, 7),  # 0.07 * 100 == 7.000000000000001 in floats: still 7
        (0.25, 10, 3),
        (0.001, 10, 1),
        (0.5, 3, 2),
        (0, 10, 0),
    ],
)
def test_resolve_steps(value, max_steps, expected):
    result = resolve_steps(value, max_steps)
    assert result == expected
    assert type(result) is int


def test_resolve_steps_fraction_needs_known_total():
    with raises(ValueError, "value=0.5", "max_steps must be > 0", "max_steps=-1"):
        resolve_steps(0.5, -1)
    with raises(ValueError, "max_steps=0"):
        resolve_steps(0.5, 0)


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf")])
def test_resolve_steps_rejects_bad_value(value):
    with raises(ValueError, f"value={value!r}"):
        resolve_steps(value, 10)


def test_resolve_steps_rejects_wrong_types():
    with raises(TypeError, "value='10'"):
        resolve_steps("10", 10)
    with raises(TypeError, "value=True"):
        resolve_steps(True, 10)
    with raises(TypeError, "max_steps=10.0"):
        resolve_steps(0.5, 10.0)


def test_resolve_steps_with_args_fields():
    args = TrainingArguments(logging_steps=0.1, save_steps=0.5, eval_strategy="steps")
    assert resolve_steps(args.logging_steps, 200) == 20
    assert resolve_steps(args.eval_steps, 200) == 20
    assert resolve_steps(args.save_steps, 200) == 100


def test_fractional_warmup_steps_are_a_ratio():  # transformers 5's spelling of warmup_ratio
    assert TrainingArguments(warmup_steps=0.1).get_warmup_steps(95) == 10


def test_warmup_steps_take_precedence():
    assert TrainingArguments(warmup_steps=7, warmup_ratio=0.5).get_warmup_steps(100) == 7


@pytest.mark.parametrize(
    ("ratio", "total", "expected"),
    [(0.0, 100, 0), (0.1, 100, 10), (0.14, 100, 14), (0.05, 30, 2), (0.5, 1, 1), (0.3, 0, 0)],
)
def test_warmup_ratio(ratio, total, expected):
    result = TrainingArguments(warmup_ratio=ratio).get_warmup_steps(total)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize("total", [-1, 1.5, True, "10"])
def test_warmup_rejects_bad_total(total):
    with raises(ValueError, f"num_training_steps={total!r}"):
        TrainingArguments().get_warmup_steps(total)


# --------------------------------------------------------------------------------------------
# Derived properties
# --------------------------------------------------------------------------------------------


def test_batch_size_properties():
    args = TrainingArguments(per_device_train_batch_size=4, per_device_eval_batch_size=16)
    assert args.train_batch_size == 4
    assert args.eval_batch_size == 16
    args.per_device_train_batch_size = 2
    assert args.train_batch_size == 2


def test_process_properties_defaults():
    args = TrainingArguments()
    assert args.world_size == 1
    assert args.process_index == 0
    assert args.local_process_index == 0
    assert args.is_main_process is True
    assert args.should_save is True


def test_process_properties_from_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = TrainingArguments()
    assert (args.world_size, args.process_index, args.local_process_index) == (4, 3, 1)
    assert args.is_main_process is False
    assert args.should_save is False


def test_process_properties_bad_env(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with raises(ValueError, "WORLD_SIZE='two'", "int"):
        TrainingArguments().world_size  # noqa: B018
    monkeypatch.setenv("WORLD_SIZE", "0")
    with raises(ValueError, "WORLD_SIZE='0'", ">= 1"):
        TrainingArguments().world_size  # noqa: B018


def test_device_cpu_when_use_cpu():
    torch = pytest.importorskip("torch")
    device = TrainingArguments(use_cpu=True).device
    assert isinstance(device, torch.device)
    assert device.type == "cpu"


def test_device_without_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainingArguments().device == torch.device("cpu")


def test_device_with_cuda(monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = TrainingArguments()
    assert args.device == torch.device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert args.device == torch.device("cuda", 1)
    args.use_cpu = True
    assert args.device == torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Serialisation
# --------------------------------------------------------------------------------------------


def test_to_dict_has_every_field():
    args = TrainingArguments()
    data = args.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(TrainingArguments)]
    assert {name: data[name] for name in [*HF_DEFAULTS, *TRACKMUX_DEFAULTS]} == {
        **HF_DEFAULTS,
        **TRACKMUX_DEFAULTS,
    }


def test_to_dict_json_round_trip():
    args = TrainingArguments(
        output_dir=pathlib.Path("runs/x"),
        learning_rate=3e-4,
        report_to=("mlflow", "wandb"),
        logging_steps=0.1,
        tracker_artifacts="best",
        tracker_strict=True,
        **LOAD_BEST,
        save_steps=0.2,
    )
    text = args.to_json_string()
    assert json.loads(text) == args.to_dict()
    assert text.startswith('{\n  "output_dir"')  # indent=2, field order
    rebuilt = TrainingArguments(**json.loads(text))
    assert rebuilt == args
    assert rebuilt.to_dict() == args.to_dict()


def test_to_dict_returns_copies():
    args = TrainingArguments(report_to=["mlflow"])
    args.to_dict()["report_to"].append("x")
    assert args.report_to == ["mlflow"]
