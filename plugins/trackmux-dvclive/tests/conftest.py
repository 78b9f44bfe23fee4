"""Every test directory of this suite lies outside any Git or DVC repository.

dvclive looks upwards from the working directory: it adds to the first DVC repository it
finds, and runs ``dvc init`` at the root of a Git work tree that has none. nox points TMPDIR
into the checkout (``.nox/<session>/tmp``), so pytest's temporary directories would be inside
the trackmux repository: the tests would write into it and see its state, not their own.
"""

from __future__ import annotations

import os
import tempfile

import pytest

_SYSTEM_TEMP_DIRS = ("/tmp", "/var/tmp")


def _inside_repository(folder: str) -> bool:
    folder = os.path.realpath(folder)
    while True:
        if any(os.path.exists(os.path.join(folder, name)) for name in (".git", ".dvc")):
            return True
        parent = os.path.dirname(folder)
        if parent == folder:
            return False
        folder = parent


def pytest_configure(config):
    if config.option.basetemp is not None or not _inside_repository(tempfile.gettempdir()):
        return
    for root in _SYSTEM_TEMP_DIRS:
        if os.path.isdir(root) and not _inside_repository(root):
            # a fixed name: pytest empties a given basetemp at each run, nothing piles up
            config.option.basetemp = os.path.join(root, f"pytest-trackmux-dvclive-{os.getuid()}")
            return
    raise pytest.UsageError(
        f"the temporary directory {tempfile.gettempdir()} is inside a Git or DVC repository "
        "and no system one is free of it: pass --basetemp=<a directory outside any repository>"
    )
