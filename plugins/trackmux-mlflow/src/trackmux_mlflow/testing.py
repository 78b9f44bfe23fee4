"""Test helper for this plugin and the plugins built on it (azure_ml, dagshub): a real
``mlflow server`` on 127.0.0.1 with a sqlite store, started and stopped cleanly."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from trackmux.testing.processes import describe_child

#: seen taking over 60 s to answer on this 2-core machine under load
STARTUP_TIMEOUT = 180.0


def free_port() -> int:
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
    # the server forks workers: signal the whole group it leads. A graceful stop waits for
    # the test process's keep-alive connections, so it only gets a few seconds
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


@contextlib.contextmanager
def mlflow_server(root: Path, *, port: int | None = None, args=(), env=None, health_path=""):
    """Run ``mlflow server`` with its store and artifacts under ``root``; yields its URL.

    ``args`` are extra server options (``--app-name basic-auth``, ``--static-prefix``...);
    ``health_path`` is prefixed to ``/health`` when a static prefix moves it."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        *(sys.executable, "-m", "mlflow", "server", *args),
        *("--backend-store-uri", f"sqlite:///{root / 'server.db'}"),
        *("--artifacts-destination", str(root / "artifacts")),
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
    ]
    environment = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        **(env or {}),
    }
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=root,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not _healthy(url + health_path):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    output = (root / "server.log").read_text(errors="replace")
                    raise RuntimeError(
                        f"mlflow server did not answer {url}/health"
                        f" (deadline {STARTUP_TIMEOUT} s)\n"
                        + describe_child(process, output, "(sent to stdout: server.log)")
                    )
                time.sleep(0.5)
            yield url
        finally:
            _stop(process)
