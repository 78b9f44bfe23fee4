"""pytest fixtures trackmux offers every test suite (registered through ``pytest11``).

Loading this plugin imports nothing heavy: torch is imported only by the fixtures' users.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def trackmux_env(monkeypatch, tmp_path):
    """An environment where trackers stay local and quiet: strict tracker errors, no
    telemetry, offline SaaS modes, every cache and data dir under ``tmp_path``."""
    monkeypatch.setenv("TRACKMUX_STRICT", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def trackmux_train(trackmux_env):
    """``trackmux_train(tracker, **training_args)`` runs a tiny training reporting to the
    jsonl log and ``tracker``; returns the finished Trainer."""
    from .conformance import run_training

    def train(tracker=None, **overrides):
        return run_training(trackmux_env / "out", tracker, **overrides)

    return train
