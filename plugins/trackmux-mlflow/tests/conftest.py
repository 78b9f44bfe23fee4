"""Session fixtures: a real ``mlflow server`` on 127.0.0.1 (sqlite backend store, proxied
artifacts), started once because it takes ~20 s to come up on a busy 2-core machine, and an
empty sqlite store to copy."""

from __future__ import annotations

import pytest

from trackmux_mlflow.testing import mlflow_server as running_server


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """A migrated, empty MLflow sqlite file to copy: creating the schema costs ~5 s a store."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    root = tmp_path_factory.mktemp("mlflow-empty-store")
    store = SqlAlchemyStore(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"))
    store.engine.dispose()
    return root / "mlflow.db"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The URL (``http://127.0.0.1:<port>``) of a running MLflow tracking server."""
    with running_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url
