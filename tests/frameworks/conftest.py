"""Fixtures of the framework tests: a real ``mlflow server`` on 127.0.0.1, started once per
session (it takes ~20 s to come up on this 2-core machine)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The URL of a running MLflow tracking server (sqlite store, proxied artifacts)."""
    pytest.importorskip("mlflow")
    testing = pytest.importorskip("trackmux_mlflow.testing")
    with testing.mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
