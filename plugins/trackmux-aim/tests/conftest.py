"""An empty Aim repository made once, to copy: Aim creates a repository's database by running
its migrations in a child Python process, which costs several seconds each time on a busy
2-core machine. The copy is a real repository that Aim itself created."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def empty_aim_repo(tmp_path_factory):
    """The ``.aim`` folder of a freshly initialised, empty Aim repository."""
    from aim import Repo

    root = tmp_path_factory.mktemp("aim-empty-repo")
    repo = Repo.from_path(str(root), init=True)
    repo.close()
    return root / ".aim"


@pytest.fixture
def seed_aim_repo(empty_aim_repo):
    """``seed_aim_repo(folder)``: an empty Aim repository at ``folder/.aim``."""

    def seed(folder):
        shutil.copytree(empty_aim_repo, folder / ".aim")
        return folder

    return seed


@pytest.fixture
def seeded_output_dir(trackmux_env, seed_aim_repo):
    """The usual output_dir of the tests (``<tmp>/out``) with an empty Aim repository in it."""
    return seed_aim_repo(trackmux_env / "out")
