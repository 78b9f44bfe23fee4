"""A real ``mlflow server`` on 127.0.0.1 standing in for a DagsHub repository's MLflow: served
under the repository's path (``--static-prefix /<owner>/<name>.mlflow``) and behind MLflow's
basic-auth app, whose one user is the repository owner with the token as password, the way
DagsHub authenticates. Started once per session: it takes ~15-20 s to come up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest

STARTUP_TIMEOUT = 90.0
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _stop(process: subprocess.Popen) -> None:
    # the server forks a uvicorn child: signal the whole group it leads
    for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


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
    port = _free_port()
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
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth"),
        *("--static-prefix", f"/{OWNER}/{NAME}.mlflow"),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}"),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    env = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "trackmux-tests-only",
        # mlflow 3 starts a background job runner otherwise: a process these tests never use
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _healthy(repository.uri):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not answer {repository.uri}/health:\n{tail}")
            time.sleep(0.5)
        yield repository
    finally:
        _stop(process)
        log.close()
