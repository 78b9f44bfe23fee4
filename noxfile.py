"""Nox sessions for trackmux: a plain ``nox`` runs lint, tests, every plugin(...), integration, docs.

Pytest options go after ``--``: ``nox -s tests -- -x -k callbacks``, ``nox -s "plugin(tensorboard)" -- -x``.
"""

# Torch is always installed first, through install_torch(), and pinned for the
# rest of the session, so no resolver (uv in particular, which does not read
# pip.conf) can swap in a multi-GB CUDA build from PyPI.  Knobs:
#   TRACKMUX_TORCH          torch requirement (default torch==2.13.0); may carry
#                           install options, e.g. "torch==2.5.1 --torch-backend=cpu"
#   TRACKMUX_WHEEL_DIR      where to look for a local torch wheel (default /opt/wheels)
#   TRACKMUX_TORCH_BACKEND  uv --torch-backend used when torch comes from an index
#                           (default cpu; empty disables it)
#   TRACKMUX_ALLOW_CUDA=1   accept nvidia-* packages in a session venv

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import nox
from packaging.tags import sys_tags
from packaging.utils import parse_wheel_filename

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

nox.needs_version = ">=2024.4.15"
# uv when available, virtualenv (+pip, which reads pip.conf) otherwise.
nox.options.default_venv_backend = "uv|virtualenv"

ROOT = Path(__file__).resolve().parent
DEFAULT_TORCH = "torch==2.13.0"
DEFAULT_WHEEL_DIR = "/opt/wheels"
RUFF = "ruff==0.17.6"

# Set for every session that runs trackmux code: trackers must never phone home.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
}


# --------------------------------------------------------------------------- plugins


def _load_toml(path: Path) -> dict:
    with path.open("rb") as fh:
        return tomllib.load(fh)


def _discover_plugins() -> list[Path]:
    """Every ``plugins/trackmux-*/`` directory that is a distribution."""
    return sorted(
        p for p in (ROOT / "plugins").glob("trackmux-*") if (p / "pyproject.toml").is_file()
    )


PLUGINS = _discover_plugins()
PLUGIN_IDS = {p.name.removeprefix("trackmux-"): p for p in PLUGINS}


def _plugin_requirement(plugin_dir: Path, extra: str = "test") -> list[str]:
    """``-e plugins/trackmux-X[extra]`` if the plugin defines that extra, else without."""
    project = _load_toml(plugin_dir / "pyproject.toml").get("project", {})
    extras = project.get("optional-dependencies", {})
    rel = plugin_dir.relative_to(ROOT).as_posix()
    return ["-e", f"{rel}[{extra}]" if extra in extras else rel]


def _installs_with_the_others(plugin_dir: Path) -> bool:
    """False for a plugin whose pyproject says ``[tool.trackmux] install-with-others = false``
    (its backend's dependencies conflict with another's): it is tested alone only."""
    settings = _load_toml(plugin_dir / "pyproject.toml").get("tool", {}).get("trackmux", {})
    return settings.get("install-with-others", True)


TOGETHER = [p for p in PLUGINS if _installs_with_the_others(p)]


def _needs(plugin_dir: Path) -> list[Path]:
    """Sibling plugins a plugin builds on (``[tool.trackmux] needs = ["trackmux-mlflow"]``):
    they are not on an index, so its session installs them from their folders."""
    settings = _load_toml(plugin_dir / "pyproject.toml").get("tool", {}).get("trackmux", {})
    return [ROOT / "plugins" / name for name in settings.get("needs", [])]


def _all_plugin_requirements(extra: str = "test") -> list[str]:
    """Every plugin that can share one environment (see _installs_with_the_others)."""
    args: list[str] = []
    for plugin_dir in TOGETHER:
        args += _plugin_requirement(plugin_dir, extra)
    return args


def _pytest_config(directory: Path) -> Path | None:
    """The pytest config file a distribution directory defines itself, if any."""
    for name in ("pytest.ini", ".pytest.ini"):
        if (directory / name).is_file():
            return directory / name
    pyproject = directory / "pyproject.toml"
    if pyproject.is_file() and "pytest" in _load_toml(pyproject).get("tool", {}):
        return pyproject
    for name, section in (("tox.ini", "[pytest]"), ("setup.cfg", "[tool:pytest]")):
        cfg = directory / name
        if cfg.is_file() and section in cfg.read_text(encoding="utf-8"):
            return cfg
    return None


# --------------------------------------------------------------------------- torch


def _uses_uv(session: nox.Session) -> bool:
    return getattr(session.virtualenv, "venv_backend", None) == "uv"


def _local_torch_wheel(spec: str) -> Path | None:
    """A wheel in TRACKMUX_WHEEL_DIR for ``torch==X`` that fits this interpreter."""
    name, sep, version = spec.partition("==")
    if name.strip().lower() != "torch" or not sep:
        return None
    version = version.strip()
    wheel_dir = Path(os.environ.get("TRACKMUX_WHEEL_DIR") or DEFAULT_WHEEL_DIR)
    supported = set(sys_tags())
    for wheel in sorted(wheel_dir.glob(f"torch-{version}*.whl")):
        try:
            _, wheel_version, _, tags = parse_wheel_filename(wheel.name)
        except ValueError:
            continue
        if version in (str(wheel_version), wheel_version.public) and tags & supported:
            return wheel
    return None


def install_torch(session: nox.Session) -> Path:
    """Install torch into the session FIRST; return a constraints file pinning it.

    The default ``torch==2.13.0`` is installed from the local CPU wheel file
    when one exists (its pure-Python dependencies come from the index), so uv
    can never resolve a CUDA build.  Every later install in the session gets
    the returned constraints file, so nothing can replace that torch.
    """
    spec_args = shlex.split(os.environ.get("TRACKMUX_TORCH", "").strip() or DEFAULT_TORCH)
    spec, options = spec_args[0], spec_args[1:]
    wheel = _local_torch_wheel(spec) if not options else None
    if wheel is not None:
        session.log(f"torch: local wheel {wheel}")
        session.install(str(wheel))
        version = str(parse_wheel_filename(wheel.name)[1])
    else:
        session.log(f"torch: {shlex.join(spec_args)} from the package index")
        backend = os.environ.get("TRACKMUX_TORCH_BACKEND", "cpu")
        if (
            _uses_uv(session)
            and backend
            and not any(
                o.startswith(("--torch-backend", "--index", "--extra-index")) for o in options
            )
        ):
            options.append(f"--torch-backend={backend}")
        session.install(spec, *options)
        version = session.run(
            "python",
            "-c",
            "import importlib.metadata as m; print(m.version('torch'))",
            silent=True,
        )
        version = (version or "").strip().splitlines()[-1] if version else ""
    constraints = Path(session.create_tmp()) / "torch-constraints.txt"
    constraints.write_text(f"torch=={version}\n" if version else "", encoding="utf-8")
    session.env["TRACKMUX_EXPECTED_TORCH"] = version
    return constraints


_CHECK_TORCH = """
import importlib.metadata as md, os, sys
version = md.version("torch")
names = {(d.metadata["Name"] or "").lower() for d in md.distributions()}
harmless = {"nvidia-ml-py", "nvidia-ml-py3"}  # NVML bindings some trackers use for GPU stats
gpu = sorted(n for n in names - harmless if n.startswith(("nvidia-", "triton")))
print(f"torch {version}; CUDA packages: {', '.join(gpu) or 'none'}")
expected = os.environ.get("TRACKMUX_EXPECTED_TORCH")
if expected and version != expected:
    sys.exit(f"torch {version} installed, expected {expected}")
if gpu and os.environ.get("TRACKMUX_ALLOW_CUDA") != "1":
    sys.exit("CUDA packages were installed (set TRACKMUX_ALLOW_CUDA=1 if that is intended)")
"""


def setup(session: nox.Session, *requirements: str) -> None:
    """Install torch, then ``requirements`` pinned to it; check; silence trackers."""
    constraints = install_torch(session)
    if requirements:
        session.install(*requirements, "-c", str(constraints))
    check = Path(session.create_tmp()) / "check_torch.py"
    check.write_text(_CHECK_TORCH, encoding="utf-8")
    session.run("python", str(check))
    session.env.update(QUIET_ENV)
    # create_tmp() pointed TMPDIR into .nox/ inside this git checkout: tests must not run
    # there (dvclive would `dvc init` the checkout, for one)
    session.env.pop("TMPDIR", None)


# --------------------------------------------------------------------------- pytest


def _test_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    files = [*directory.rglob("test_*.py"), *directory.rglob("*_test.py")]
    return [f for f in files if "__pycache__" not in f.parts]


def run_pytest(session: nox.Session, target: Path, *options: str) -> None:
    """One pytest run over ``target``; skip (exit-5 safe) only if it has no test files."""
    rel = target.relative_to(ROOT).as_posix()
    if not _test_files(target):
        session.skip(f"no test files under {rel}/ yet")
    session.run("pytest", *options, rel, *session.posargs)


# --------------------------------------------------------------------------- sessions


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the whole tree (plugins included)."""
    session.install(RUFF)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Core test suite (tests/, minus tests/integration which needs every plugin and
    tests/frameworks which needs transformers or Lightning); matplotlib for ``trackmux plot``."""
    setup(session, "-e", ".[test,plot]")
    run_pytest(session, ROOT / "tests", "--ignore=tests/integration", "--ignore=tests/frameworks")


@nox.session
@nox.parametrize("name", list(PLUGIN_IDS), ids=list(PLUGIN_IDS))
def plugin(session: nox.Session, name: str) -> None:
    """One tracker plugin, installed alone next to the core, against its own tests."""
    plugin_dir = PLUGIN_IDS[name]
    rel = plugin_dir.relative_to(ROOT).as_posix()
    siblings = [arg for needed in _needs(plugin_dir) for arg in _plugin_requirement(needed, "")]
    setup(session, "-e", ".[test]", *siblings, *_plugin_requirement(plugin_dir))
    # rootdir and conftest lookup stop at the plugin directory: the plugin's own
    # conftest.py files apply, the core's tests/conftest.py (or a repo-level one)
    # never does.  The plugin's own pytest config wins; otherwise the core's.
    config = _pytest_config(plugin_dir) or ROOT / "pyproject.toml"
    run_pytest(
        session,
        plugin_dir / "tests",
        f"--rootdir={rel}",
        f"--confcutdir={rel}",
        "-c",
        config.relative_to(ROOT).as_posix(),
    )


def _pip_check(session: nox.Session) -> None:
    if _uses_uv(session):
        python = Path(session.bin) / ("python.exe" if sys.platform == "win32" else "python")
        session.run(nox.virtualenv.UV, "pip", "check", "--python", str(python), external=True)
    else:
        session.run("python", "-m", "pip", "check")


@nox.session
def integration(session: nox.Session) -> None:
    """Core + ALL plugins in one environment: dependency check, then tests/integration."""
    setup(session, "-e", ".[test]", *_all_plugin_requirements("test"))
    _pip_check(session)
    run_pytest(session, ROOT / "tests" / "integration")


@nox.session
def demo(session: nox.Session) -> None:
    """Run ``trackmux demo`` with the core and every plugin installed."""
    setup(session, "-e", ".", *_all_plugin_requirements(extra=""))
    output_dir = Path(session.create_tmp()) / "demo"
    session.run("trackmux", "demo", "--output-dir", str(output_dir), *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """benchmarks/run.py with the core and every plugin installed (posargs pass through)."""
    setup(session, "-e", ".", *_all_plugin_requirements(extra=""))
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """mkdocs build --strict (site/ is git-ignored)."""
    setup(session, ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """benchmarks/run.py against the peers too: core, every plugin, Hugging Face transformers
    (with accelerate, which its Trainer needs) and Lightning, matplotlib for the charts
    (posargs pass through)."""
    setup(
        session,
        "-e",
        ".[transformers,lightning,plot]",
        *_all_plugin_requirements(extra=""),
    )
    session.run("python", "benchmarks/run.py", *session.posargs)


def _framework_session(session: nox.Session, extra: str, test_file: str) -> None:
    """The core with a framework extra and the TensorBoard and MLflow plugins (the tests read
    metrics back from both), against one file of tests/frameworks."""
    setup(
        session,
        "-e",
        f".[test,{extra}]",
        *_plugin_requirement(PLUGIN_IDS["tensorboard"]),
        *_plugin_requirement(PLUGIN_IDS["mlflow"]),
    )
    others = [
        f"--ignore={path.relative_to(ROOT).as_posix()}"
        for path in _test_files(ROOT / "tests" / "frameworks")
        if path.name != test_file
    ]
    run_pytest(session, ROOT / "tests" / "frameworks", *others)


@nox.session
def transformers(session: nox.Session) -> None:
    """TrackmuxCallback in the real Hugging Face transformers Trainer."""
    _framework_session(session, "transformers", "test_transformers.py")


@nox.session
def lightning(session: nox.Session) -> None:
    """TrackmuxLogger in a real Lightning Trainer."""
    _framework_session(session, "lightning", "test_lightning.py")


@nox.session
def everywhere(session: nox.Session) -> None:
    """examples/everywhere.py: trackmux's Trainer, transformers, Lightning and a plain loop
    reporting the same way to one MLflow server."""
    _framework_session(session, "transformers,lightning", "test_everywhere.py")


nox.options.sessions = [
    "lint",
    "tests",
    "plugin",
    "integration",
    "transformers",
    "lightning",
    "everywhere",
    "docs",
]
