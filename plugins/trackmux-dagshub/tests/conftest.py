"""A real ``mlflow server`` on 127.0.0.1 standing in for a DagsHub repository's MLflow: served
under the repository's path (``--static-prefix /<owner>/<name>.mlflow``) and behind MLflow's
basic-auth app, whose one user is the repository owner with the token as password, the way
DagsHub authenticates. Started once per session: it takes ~15-20 s to come up."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from trackmux_mlflow.testing import free_port
from trackmux_mlflow.testing import mlflow_server as running_server

OWNER = "trackmux-ci"
NAME = "toy-repo"
TOKEN = "dagshub-test-token-0123456789"


@dataclass(frozen=True)
class Repository:
    host: str  # what the tracker's ``host`` setting is: http://127.0.0.1:<port>
    owner: str
    name: str
    token: str

    @property
    def repo(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def uri(self) -> str:
        return f"{self.host}/{self.owner}/{self.name}.mlflow"


def _auth_database(root) -> str:
    """MLflow's basic-auth database, holding the repository owner as admin, password hashed
    cheaply: the app checks the password on every request, and with its default hash
    (scrypt, ~0.4 s a check on a busy 2-core machine) that check would dominate the tests."""
    import sqlite3

    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    from werkzeug.security import generate_password_hash

    path = root / "basic_auth.db"
    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{path}")
    store.create_user(OWNER, TOKEN, is_admin=True)
    store.engine.dispose()
    cheap = generate_password_hash(TOKEN, method="pbkdf2:sha256:1")
    with sqlite3.connect(path) as db:
        db.execute("UPDATE users SET password_hash = ? WHERE username = ?", (cheap, OWNER))
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def dagshub_repo(tmp_path_factory) -> Repository:
    root = tmp_path_factory.mktemp("dagshub-server")
    port = free_port()
    repository = Repository(f"http://127.0.0.1:{port}", OWNER, NAME, TOKEN)
    auth_config = root / "basic_auth.ini"
    auth_config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {_auth_database(root)}\n"
        f"admin_username = {OWNER}\n"
        f"admin_password = {TOKEN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        encoding="utf-8",
    )
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "trackmux-tests-only",
        # mlflow 3 starts a background job runner otherwise: a process these tests never use
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    prefix = f"/{OWNER}/{NAME}.mlflow"
    with running_server(
        root,
        port=port,
        args=("--app-name", "basic-auth", "--static-prefix", prefix),
        env=env,
        health_path=prefix,
    ):
        yield repository
