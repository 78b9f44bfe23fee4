"""Issue 8, scenario 8: bad input, each refused or handled with a clear message, and
nothing lost: report_to values, metric values, params, an output_dir that cannot be
written. (A plugin whose entry point fails to import: tests/test_plugins.py.)"""

from __future__ import annotations

import json
import math
import os
import pathlib

import numpy as np
import pytest
import torch
from reliability_helpers import Recorder, make_trainer, report

from trackmux import ReportToError, Trainer, TrainingArguments
from trackmux.report_to import requested_names
from trackmux.runlog import find_runs, read_run

# ----------------------------------------------------------------------------- report_to


@pytest.mark.parametrize(
    "value, names",
    [
        (["JSONL"], ["jsonl"]),  # mixed case finds the plugin
        ("Jsonl, jsonl ,JSONL", ["jsonl"]),  # duplicates, spaces and case: once
        (["jsonl", "jsonl"], ["jsonl"]),
        ("NONE", ["jsonl"]),  # no plugin; the run journal is kept
        ("jsonl,", ["jsonl"]),  # a trailing comma is not a tracker
    ],
)
def test_report_to_spellings_that_mean_the_same(tmp_path, value, names):
    trainer = make_trainer(tmp_path, report_to=value)
    trainer.train()
    assert [t.name for t in trainer.trackers.trackers] == names


@pytest.mark.parametrize("value", ["", " ", ",", [""], [" ", ""]])
def test_an_empty_report_to_is_refused_before_training(tmp_path, value):
    trainer = make_trainer(tmp_path, report_to=value)
    with pytest.raises(ReportToError, match="names no tracker; use 'none'"):
        trainer.train()
    assert trainer.state.global_step == 0


@pytest.mark.parametrize("value", [3, {"jsonl"}, ["jsonl", 1], [None]])
def test_a_report_to_of_the_wrong_type_is_refused_at_construction(tmp_path, value):
    with pytest.raises(TypeError, match=r"TrainingArguments\.report_to="):
        TrainingArguments(output_dir=str(tmp_path), report_to=value)
    with pytest.raises(ReportToError, match="must be"):
        requested_names(value)


def test_an_unknown_report_to_names_what_is_installed(tmp_path):
    with pytest.raises(ReportToError, match=r"'jsnol'.*Did you mean 'jsonl'.*Installed: jsonl"):
        make_trainer(tmp_path, report_to=["jsnol"]).train()


# ------------------------------------------------------------------------------- metrics

BAD_METRICS = {
    "nan": float("nan"),
    "inf": float("inf"),
    "minus_inf": float("-inf"),
    "scalar_tensor": torch.tensor(0.25),
    "vector_tensor": torch.tensor([1.0, 2.0]),
    "numpy_float": np.float32(0.5),
    "numpy_int": np.int64(3),
    "numpy_bool": np.bool_(True),
    "text": "not a number",
    "nothing": None,
    "a_list": [1, 2],
}
KEPT = {
    "train/nan": math.nan,
    "train/inf": math.inf,
    "train/minus_inf": -math.inf,
    "train/scalar_tensor": 0.25,
    "train/numpy_float": 0.5,
    "train/numpy_int": 3,
    "train/numpy_bool": 1,
}
SKIPPED = ("vector_tensor", "text", "nothing", "a_list")


class OddValuesTrainer(Trainer):
    def log(self, logs):
        if "loss" in logs:
            logs.update(BAD_METRICS)
        super().log(logs)


def same(a, b) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_metric_values_numbers_arrive_the_rest_is_skipped_once(tmp_path, caplog, record_property):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [recorder], trainer_class=OddValuesTrainer)
    trainer.train()

    logged = read_run(find_runs(tmp_path)[-1])
    for name, expected in KEPT.items():
        assert [s for s, _ in logged.history(name)] == [1, 2, 3, 4, 5, 6], name
        assert all(same(value, expected) for _, value in logged.history(name)), name
        received = [call[2][name] for call in recorder.of("metrics")]
        assert len(received) == 6 and all(same(v, expected) for v in received), name
        assert all(type(v) in (int, float) for v in received), name  # plain numbers
    report(
        record_property,
        6 * len(KEPT),
        jsonl=sum(len(logged.history(n)) for n in KEPT),
        recorder=sum(len(c[2]) - 3 for c in recorder.of("metrics")),  # minus loss/norm/lr
    )
    for key in SKIPPED:
        warnings = [r for r in caplog.records if f"not logging {key!r}" in r.getMessage()]
        assert len(warnings) == 1, key  # once per key, not once per step
        assert f"train/{key}" not in logged.metrics
    # the jsonl file itself stays valid JSON (NaN/inf are written as strings)
    for line in (pathlib.Path(logged.path) / "events.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in the log"))


# -------------------------------------------------------------------------------- params


class Strict(Recorder):
    """A backend with limits: 250-character values, 200-character names, no '@' or '#'."""

    name = "strict-backend"
    max_param_value_length = 250
    max_name_length = 200

    def sanitize_name(self, name):
        return name.replace("@", "_").replace("#", "_")


def deep(levels: int, leaf):
    return leaf if levels == 0 else {f"level{levels}": deep(levels - 1, leaf)}


class Unserialisable:
    def __repr__(self):
        return "<Unserialisable>"


ODD_PARAMS = {
    "nested": deep(5, "bottom"),
    "big": "x" * 100_000,
    "acc@1#top": 0.5,
    "object": Unserialisable(),
    "a_set": {3},
    "a_path": pathlib.Path("/data/set"),
    "dtype": torch.float16,
    "device": torch.device("cpu"),
    "mixed_list": [1, Unserialisable()],
    "nan": float("nan"),
    "empty": {},
    "many": {f"p{i}": i for i in range(10_000)},
}


def test_params_of_every_shape_arrive_whole_in_the_log(tmp_path, caplog, record_property):
    strict = Strict()
    trainer = make_trainer(tmp_path, [strict])
    trainer.hyperparameters = ODD_PARAMS
    trainer.train()

    config = read_run(find_runs(tmp_path)[-1]).config
    assert config["nested/level5/level4/level3/level2/level1"] == "bottom"
    assert config["big"] == "x" * 100_000  # the local log keeps it whole
    assert config["acc@1#top"] == 0.5
    assert config["object"] == "<Unserialisable>"
    assert config["a_set"] == "{3}"
    assert config["a_path"] == "/data/set"
    assert config["dtype"] == "torch.float16" and config["device"] == "cpu"
    assert config["mixed_list"] == "[1, <Unserialisable>]"
    assert config["nan"] == "nan"
    assert config["empty"] == "{}"
    many = {key: value for key, value in config.items() if key.startswith("many/")}
    assert many == {f"many/p{i}": i for i in range(10_000)}

    # a backend with limits gets every param too, cut and renamed, with one warning
    backend = strict.runs[0].config
    report(record_property, len(config), jsonl=len(config), **{"strict-backend": len(backend)})
    assert len(backend) == len(config)
    assert backend["big"] == "x" * 250
    assert backend["acc_1_top"] == 0.5
    cut = [r.getMessage() for r in caplog.records if "were cut" in r.getMessage()]
    assert len(cut) == 1 and "strict-backend" in cut[0] and "big" in cut[0]


# ---------------------------------------------------------------------------- output_dir


def test_an_output_dir_under_a_file_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    trainer = make_trainer(blocker / "out")
    with pytest.raises(OSError, match=r"TrainingArguments\.output_dir=.*is not writable") as error:
        trainer.train()
    assert "Pass an output_dir you can write to" in str(error.value)
    assert trainer.state.global_step == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through directory permissions")
def test_a_read_only_output_dir_is_refused_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        trainer = make_trainer(locked, save_strategy="steps", save_steps=2)
        with pytest.raises(PermissionError, match=r"TrainingArguments\.output_dir="):
            trainer.train()
        assert trainer.state.global_step == 0
    finally:
        locked.chmod(0o700)


def test_a_read_only_file_system_is_refused_before_training():
    if not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    trainer = make_trainer("/proc/self/trackmux-out")
    with pytest.raises(OSError, match=r"output_dir='/proc/self/trackmux-out' is not writable"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_nothing_is_checked_when_nothing_is_written():
    trainer = make_trainer("/proc/self/trackmux-out", report_to="none", run_journal=False)
    trainer.train()  # no checkpoint, no run log: an unwritable output_dir does not matter
    assert trainer.state.global_step == 6
