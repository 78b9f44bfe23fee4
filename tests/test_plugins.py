"""Entry-point discovery: plugins load one by one, a broken one does not stop the others,
backends are checked from metadata without being imported, autoload can be disabled."""

import json
import sys
import textwrap

import pytest

from trackmux.plugins import AVAILABLE, BROKEN, UNAVAILABLE, check_backend, get_registry
from trackmux.report_to import ReportToError
from trackmux.testing import describe_child, run_child


def make_distribution(root, name, entry_points: dict, modules: dict, requires=()):
    """Write an installed-looking distribution (dist-info + modules) under ``root``."""
    dist_info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    metadata = ["Metadata-Version: 2.1", f"Name: {name}", "Version: 1.0"]
    metadata += [f"Requires-Dist: {r}" for r in requires]
    (dist_info / "METADATA").write_text("\n".join(metadata) + "\n")
    lines = ["[trackmux]"] + [f"{ep} = {target}" for ep, target in entry_points.items()]
    (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


GOOD_PLUGIN = """
    from trackmux import Tracker, hookimpl

    class GoodTracker(Tracker):
        name = "good"
        def start(self, run): return None
        def log_metrics(self, metrics, step, epoch=None): pass
        def finish(self, status): pass

    @hookimpl
    def register_trackers(register):
        register(GoodTracker)
"""

NEEDS_MISSING_BACKEND = """
    from trackmux import Tracker, hookimpl

    class NeedsBackend(Tracker):
        name = "needy"
        requires = ("surely-not-installed-backend>=1.0",)
        def start(self, run): import surely_not_installed_backend
        def log_metrics(self, metrics, step, epoch=None): pass
        def finish(self, status): pass

    @hookimpl
    def register_trackers(register):
        register(NeedsBackend)
"""

OLD_BACKEND = """
    from trackmux import Tracker, hookimpl

    class WantsNewPluggy(Tracker):
        name = "picky"
        requires = ("pluggy>=99",)
        def start(self, run): pass
        def log_metrics(self, metrics, step, epoch=None): pass
        def finish(self, status): pass

    @hookimpl
    def register_trackers(register):
        register(WantsNewPluggy)
"""


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    make_distribution(tmp_path, "trackmux-good", {"good": "tm_good"}, {"tm_good": GOOD_PLUGIN})
    make_distribution(
        tmp_path,
        "trackmux-broken",
        {"broken": "tm_broken"},
        {"tm_broken": "raise ImportError('nope')"},
    )
    make_distribution(
        tmp_path, "trackmux-needy", {"needy": "tm_needy"}, {"tm_needy": NEEDS_MISSING_BACKEND}
    )
    make_distribution(tmp_path, "trackmux-picky", {"picky": "tm_picky"}, {"tm_picky": OLD_BACKEND})
    make_distribution(tmp_path, "trackmux-empty", {"empty": "tm_empty"}, {"tm_empty": "x = 1\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.delenv("TRACKMUX_PLUGINS", raising=False)
    registry = get_registry(refresh=True)
    yield registry
    get_registry(refresh=True)


def test_entry_points_load_one_by_one(fake_plugins):
    plugins = fake_plugins.plugins
    assert plugins["jsonl"].status == AVAILABLE and plugins["jsonl"].builtin
    assert plugins["good"].status == AVAILABLE
    assert plugins["good"].distribution == "trackmux-good"
    assert plugins["broken"].status == BROKEN
    assert "ImportError: nope" in plugins["broken"].reason
    assert plugins["empty"].status == BROKEN
    assert "registered no tracker" in plugins["empty"].reason


def test_missing_backend_is_unavailable_with_its_pip_line(fake_plugins):
    needy = fake_plugins.get("needy")
    assert needy.status == UNAVAILABLE
    assert needy.reason == "backend missing: surely-not-installed-backend is not installed"
    assert needy.fix == 'pip install "surely-not-installed-backend>=1.0"'
    picky = fake_plugins.get("picky")
    assert picky.status == UNAVAILABLE
    assert "pluggy" in picky.reason and "pluggy>=99 is supported" in picky.reason


def test_backend_is_checked_without_importing_it():
    class UsesTqdm:
        requires = ("tqdm>=4",)
        backend_modules = ()

    sys.modules.pop("tqdm", None)
    reason, version = check_backend(UsesTqdm)
    assert reason is None and version
    assert "tqdm" not in sys.modules


def test_module_that_cannot_be_found_is_unavailable():
    class WrongModule:
        requires = ("tqdm>=4",)
        backend_modules = ("no_such_module_here",)

    reason, _ = check_backend(WrongModule)
    assert reason == "backend missing: module 'no_such_module_here' cannot be imported"


def test_report_to_uses_discovered_plugins(fake_plugins, tmp_path):
    from trackmux.report_to import resolve

    selection = resolve("all", fake_plugins)
    assert [info.name for info in selection.chosen] == ["jsonl", "good"]
    skipped = dict(selection.skipped)
    assert skipped["needy"].startswith("backend missing")
    assert skipped["broken"].startswith("broken")
    with pytest.raises(ReportToError, match="cannot run: backend missing.*pip install"):
        resolve(["good", "needy"], fake_plugins)


def test_autoload_can_be_disabled(fake_plugins, monkeypatch):
    monkeypatch.setenv("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = get_registry(refresh=True)
    assert list(registry.plugins) == ["jsonl"]


def test_autoload_can_be_narrowed(fake_plugins, monkeypatch):
    monkeypatch.setenv("TRACKMUX_PLUGINS", "good, needy")
    registry = get_registry(refresh=True)
    assert sorted(registry.plugins) == ["good", "jsonl", "needy"]


def test_cli_lists_plugins_with_reasons(fake_plugins, tmp_path):
    env_path = str(tmp_path)
    command = [sys.executable, "-m", "trackmux", "plugins", "--json"]
    result = run_child(command, env={**_clean_env(), "PYTHONPATH": env_path})
    listing = json.loads(result.stdout)
    by_name = {row["name"]: row for row in listing["plugins"]}
    assert by_name["good"]["status"] == "available"
    assert by_name["good"]["mode"] == "local"
    assert by_name["needy"]["fix"] == 'pip install "surely-not-installed-backend>=1.0"'
    assert by_name["broken"]["status"] == "broken"
    wandb = next(row for row in listing["not_installed"] if row["name"] == "wandb")
    assert wandb == {
        "name": "wandb",
        "distribution": "trackmux-wandb",
        "install": {
            "from a clone": "pip install -e plugins/trackmux-wandb",
            "from a wheelhouse": "pip install --find-links WHEELHOUSE trackmux-wandb",
            "once published": "pip install trackmux-wandb",
        },
    }
    table = run_child(command[:-1], env={**_clean_env(), "PYTHONPATH": env_path}, check=False)
    assert table.returncode == 0, describe_child(table)
    assert "to enable needy: pip install" in table.stdout, describe_child(table)
    assert "broken: ImportError: nope" in table.stdout, describe_child(table)


def _clean_env():
    import os

    return {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD", "TRACKMUX_PLUGINS")
    }


def test_import_trackmux_loads_no_torch_pluggy_or_entry_points():
    code = (
        "import sys, trackmux;"
        "bad = [m for m in ('torch', 'pluggy', 'trackmux.plugins', 'numpy') if m in sys.modules];"
        "assert not bad, bad"
    )
    run_child([sys.executable, "-c", code])


def test_discovery_imports_no_backend(fake_plugins, tmp_path):
    code = (
        "import sys; from trackmux.plugins import get_registry; r = get_registry();"
        "assert 'needy' in r.plugins;"
        "bad = [m for m in ('surely_not_installed_backend', 'torch') if m in sys.modules];"
        "assert not bad, bad"
    )
    run_child([sys.executable, "-c", code], env={**_clean_env(), "PYTHONPATH": str(tmp_path)})
