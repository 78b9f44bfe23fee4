"""Session fixtures: a real ``mlflow server`` on 127.0.0.1 standing in for the MLflow endpoint
an Azure ML job provides, started once (20 s to over a minute to come up on a busy machine), and a
guard that fails any test that tries to reach a host other than this machine.

The server comes from the MLflow plugin's test helper, ``trackmux_mlflow.testing``."""

from __future__ import annotations

import socket

import pytest

from trackmux_mlflow.testing import mlflow_server as running_server

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """The URL (``http://127.0.0.1:<port>``) of a running MLflow tracking server."""
    with running_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


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
