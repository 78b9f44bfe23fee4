"""pytest fixtures trackmux offers every test suite (registered through ``pytest11``).

Loading this plugin imports nothing heavy: torch is imported only by the fixtures' users.
"""

from __future__ import annotations

import pytest

# their failures then show the values compared, as a test's own asserts do
pytest.register_assert_rewrite("trackmux.testing.plugin_checks")

#: variables through which a developer's shell would steer a backend during tests
BACKEND_ENV_VARS = (
    "TRACKMUX_PLUGINS",
    "TRACKMUX_DISABLE_PLUGIN_AUTOLOAD",
    "TENSORBOARD_LOGGING_DIR",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_TAGS",
    "MLFLOW_NESTED_RUN",
    "HF_MLFLOW_LOG_ARTIFACTS",
    "WANDB_PROJECT",
    "WANDB_ENTITY",
    "WANDB_API_KEY",
    "WANDB_LOG_MODEL",
    "WANDB_WATCH",
    "WANDB_NAME",
    "WANDB_RUN_GROUP",
    "WANDB_TAGS",
    "WANDB_DIR",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_BASE_URL",
    "WANDB_DISABLED",
    "COMET_API_KEY",
    "COMET_MODE",
    "COMET_PROJECT_NAME",
    "COMET_WORKSPACE",
    "COMET_OFFLINE_DIRECTORY",
    "COMET_LOG_ASSETS",
    "COMET_EXPERIMENT_KEY",
    "COMET_CONFIG",
    "NEPTUNE_API_TOKEN",
    "NEPTUNE_PROJECT",
    "NEPTUNE_MODE",
    "NEPTUNE_DATA_DIRECTORY",
    "NEPTUNE_CUSTOM_RUN_ID",
    "NEPTUNE_LOG_CHECKPOINTS",
    "CLEARML_API_ACCESS_KEY",
    "CLEARML_API_SECRET_KEY",
    "CLEARML_API_HOST",
    "CLEARML_PROJECT",
    "CLEARML_TASK",
    "CLEARML_LOG_MODEL",
    "CLEARML_OFFLINE_MODE",
    "CLEARML_PROC_MASTER_ID",
    "HF_DVCLIVE_LOG_MODEL",
    "DAGSHUB_USER_TOKEN",
    "TRACKIO_DIR",
    "TRACKIO_PROJECT",
    "TRACKIO_SPACE_ID",
    "TRACKIO_SERVER_URL",
    "TRACKIO_DATASET_ID",
    "TRACKIO_BUCKET_ID",
    "TRACKIO_WEBHOOK_URL",
    "TRACKIO_WRITE_TOKEN",
    "SWANLAB_LOG_DIR",
    "SWANLAB_MODE",
    "SWANLAB_PROJECT",
    "SWANLAB_WORKSPACE",
    "SWANLAB_API_KEY",
    "SWANLAB_RUN_ID",
    "SWANLAB_RESUME",
    "AIM_REPO",
    "AIM_EXPERIMENT",
    "__AIM_REPO_NAME__",
)


@pytest.fixture
def trackmux_env(monkeypatch, tmp_path, tmp_path_factory):
    """An environment where trackers stay local and quiet: strict tracker errors, no
    telemetry, offline SaaS modes, the working directory in ``tmp_path``, a fresh ``HOME``
    of its own, and none of the developer's backend variables
    (:data:`BACKEND_ENV_VARS`)."""
    for name in BACKEND_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    # a developer's ~/.comet.config, ~/.netrc (wandb) or ~/.clearml.conf must not take a
    # test online
    # beside tmp_path, not in it: tests may check what a run wrote there
    home = tmp_path_factory.mktemp("home")
    # (ClearML's cache and W&B's config/data dirs default to places under HOME too)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("TRACKMUX_STRICT", "1")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("COMET_ERROR_TRACKING_ENABLE", "false")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def network_attempts(monkeypatch):
    """Every network access this process tries, refused and recorded: a DNS lookup
    (``socket.getaddrinfo``, which ``create_connection`` and HTTP clients go through) as
    ``("getaddrinfo", host)``, an internet socket's ``connect``/``connect_ex`` (IPv4 or IPv6,
    loopback included) as ``("connect", address)``. Unix sockets are left alone: backends use
    them for their own local processes. A test asserts the list is empty at the end; a refusal
    the backend swallowed still shows there."""
    import errno
    import socket

    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(("getaddrinfo", host))
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")

    def internet(sock, address) -> bool:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(("connect", address))
            return True
        return False

    def connect(sock, address):
        if internet(sock, address):
            raise ConnectionRefusedError(errno.ECONNREFUSED, "no network in this test")
        return real_connect(sock, address)

    def connect_ex(sock, address):
        return errno.ECONNREFUSED if internet(sock, address) else real_connect_ex(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts


@pytest.fixture
def trackmux_train(trackmux_env):
    """``trackmux_train(tracker, **training_args)`` runs a tiny training reporting to the
    jsonl log and ``tracker``; returns the finished Trainer."""
    from .conformance import run_training

    def train(tracker=None, **overrides):
        return run_training(trackmux_env / "out", tracker, **overrides)

    return train
