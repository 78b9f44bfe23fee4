"""trackmux: one PyTorch training loop, every experiment tracker.

``import trackmux`` is cheap: torch, pluggy and every tracker backend load only when the
attribute that needs them is first used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Trainer": "trackmux.trainer",
    "TrainingArguments": "trackmux.training_args",
    "TrainerState": "trackmux.trainer_state",
    "TrainerControl": "trackmux.trainer_state",
    "ExportableState": "trackmux.trainer_state",
    "TrainerCallback": "trackmux.trainer_callback",
    "CallbackHandler": "trackmux.trainer_callback",
    "DefaultFlowCallback": "trackmux.trainer_callback",
    "PrinterCallback": "trackmux.trainer_callback",
    "ProgressCallback": "trackmux.trainer_callback",
    "EarlyStoppingCallback": "trackmux.trainer_callback",
    "EvalPrediction": "trackmux.trainer_utils",
    "PredictionOutput": "trackmux.trainer_utils",
    "TrainOutput": "trackmux.trainer_utils",
    "set_seed": "trackmux.trainer_utils",
    "Tracker": "trackmux.tracker",
    "RunInfo": "trackmux.tracker",
    "TrackerError": "trackmux.delivery",
    "JournalError": "trackmux.delivery",
    "NonFiniteLossError": "trackmux.trainer_utils",
    "ReportToError": "trackmux.report_to",
    "hookimpl": "trackmux.hookspecs",
    "hookspec": "trackmux.hookspecs",
    "read_run": "trackmux.runlog",
    "start_run": "trackmux.run",
    "Run": "trackmux.run",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trackmux' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
