"""Keep clearml inside each test's tmp_path: its cache (where offline sessions go) and its
configuration file, so a developer's ~/.clearml and ~/clearml.conf are never read or written
and every task runs offline."""

from __future__ import annotations

import pytest

CLEARML_ENV = (
    "CLEARML_PROJECT",
    "CLEARML_TASK",
    "CLEARML_LOG_MODEL",
    "CLEARML_OFFLINE_MODE",
    "TRAINS_OFFLINE_MODE",
    "CLEARML_API_HOST",
    "CLEARML_API_ACCESS_KEY",
    "CLEARML_API_SECRET_KEY",
    "TRAINS_API_HOST",
    "TRAINS_API_ACCESS_KEY",
    "TRAINS_CONFIG_FILE",
    "CLEARML_TASK_ID",
    "CLEARML_SET_ITERATION_OFFSET",
)


@pytest.fixture(autouse=True)
def clearml_home(monkeypatch, tmp_path):
    """The cache directory of this test's offline sessions."""
    for name in CLEARML_ENV:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "clearml.conf"
    config.write_text("# no server: tasks run offline\n")
    # clearml reads its configuration once per process: the first test's (empty) file rules
    monkeypatch.setenv("CLEARML_CONFIG_FILE", str(config))
    cache = tmp_path / "clearml-cache"
    monkeypatch.setenv("CLEARML_CACHE_DIR", str(cache))
    return cache
