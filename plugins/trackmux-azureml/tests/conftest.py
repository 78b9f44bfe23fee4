"""Session fixtures: a real ``mlflow server`` on 127.0.0.1 standing in for the MLflow endpoint
an Azure ML job provides, started once (20 s to over a minute to come up on a busy machine), and a
guard that fails any test that tries to reach a host other than this machine.

The server fixture is the one of plugins/trackmux-mlflow/tests/conftest.py: a conftest is not
an importable module, so it is repeated here."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

# seen taking over 60 s on this 2-core machine under load
STARTUP_TIMEOUT = 180.0
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


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
    # the server forks workers: signal the whole group it leads
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The URL (``http://127.0.0.1:<port>``) of a running MLflow tracking server."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed at teardown
    command = [
        *(sys.executable, "-m", "mlflow", "server"),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}"),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"mlflow server did not answer {url}/health:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(process)
        log.close()


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Refuse (and record) every connection or name lookup that is not for this machine: an
    azureml:// URI, Azure's identity endpoints (IMDS, login.microsoftonline.com) would fail
    the test here instead of timing out against the network. Yields the refused hosts."""
    refused: list[str] = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in LOOPBACK:
            refused.append(str(host))
            raise OSError(f"test guard: no network outside this machine ({host})")
        return real_connect(sock, address)

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            refused.append(str(host))
            raise socket.gaierror(f"test guard: no name lookups ({host})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield refused
    assert refused == [], f"the test tried to reach {refused}"
