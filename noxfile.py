"""Nox sessions for trackmux: a plain ``nox`` runs lint, tests, every plugin(...), integration, docs.

Pytest options go after ``--``: ``nox -s tests -- -x -k callbacks``, ``nox -s "plugin(tensorboard)" -- -x``.

Every session installs from its lock file, ``requirements/<environment>.txt``, used as
constraints: a fresh clone gets exactly the versions that last passed, whatever the index
serves today. ``nox -s lock`` regenerates them; ``nox -s latest`` runs the default sessions
against the newest releases instead and reports what broke and which versions moved.
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
#   TRACKMUX_LOCKS=0        install the newest releases instead of the lock files
#                           (what ``nox -s latest`` does, in .nox-latest/)

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
LOCK_DIR = ROOT / "requirements"
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


def setup(
    session: nox.Session,
    environment: str,
    *,
    from_wheels: bool = False,
    wheelhouse: Path | None = None,
) -> None:
    """Install torch, then the ``environment``'s requirements from its lock file, pinned to
    that torch; check; silence trackers. ``from_wheels``: this repository's distributions are
    installed from wheels, not editable (see install_from_wheelhouse)."""
    constraints = install_torch(session)
    if from_wheels:
        install_from_wheelhouse(session, environment, "-c", str(constraints), wheelhouse=wheelhouse)
    else:
        install_environment(session, environment, "-c", str(constraints))
    check = Path(session.create_tmp()) / "check_torch.py"
    check.write_text(_CHECK_TORCH, encoding="utf-8")
    session.run("python", str(check))
    session.env.update(QUIET_ENV)
    # create_tmp() pointed TMPDIR into .nox/ inside this git checkout: tests must not run
    # there (dvclive would `dvc init` the checkout, for one)
    session.env.pop("TMPDIR", None)


# --------------------------------------------------------------------------- environments
#
# What each session installs, by environment name; ``requirements/<name>.txt`` is its lock.
# The packages' own requirements stay ranges (pyproject.toml): only test environments are
# locked, and a lock is used as constraints, so it pins versions without installing more.


def _plugin_environment(plugin_dir: Path) -> list[str]:
    siblings = [arg for needed in _needs(plugin_dir) for arg in _plugin_requirement(needed, "")]
    return ["-e", ".[test]", *siblings, *_plugin_requirement(plugin_dir)]


def _framework_environment(extras: str) -> list[str]:
    """The core with framework extras and the TensorBoard and MLflow plugins (the framework
    tests read metrics back from both)."""
    return [
        "-e",
        f".[test,{extras}]",
        *_plugin_requirement(PLUGIN_IDS["tensorboard"]),
        *_plugin_requirement(PLUGIN_IDS["mlflow"]),
    ]


ENVIRONMENTS: dict[str, list[str]] = {
    "tools": ["nox", "uv"],  # what .ci/run installs to run nox itself
    "lint": [RUFF],
    "tests": ["-e", ".[test,plot]"],
    **{f"plugin-{name}": _plugin_environment(path) for name, path in PLUGIN_IDS.items()},
    "integration": ["-e", ".[test]", *_all_plugin_requirements("test")],
    "all-plugins": ["-e", ".", *_all_plugin_requirements(extra="")],  # demo, bench
    "bench-peers": ["-e", ".[transformers,lightning,plot]", *_all_plugin_requirements(extra="")],
    "transformers": _framework_environment("transformers"),
    "lightning": _framework_environment("lightning"),
    "everywhere": _framework_environment("transformers,lightning"),
    "docs": [".[docs]"],
}
#: environments whose sessions do not install torch (and so whose locks leave it out)
WITHOUT_TORCH = {"tools", "lint"}


def _locked() -> bool:
    return os.environ.get("TRACKMUX_LOCKS", "1").strip().lower() not in ("0", "false", "no")


def lock_file(environment: str) -> Path:
    return LOCK_DIR / f"{environment}.txt"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines: list[str]) -> dict[str, str]:
    """``{name: version}`` of the ``name==version`` lines (a lock file, a freeze)."""
    pins = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)", line.strip())
        if match:
            pins[_canonical(match.group(1))] = match.group(2)
    return pins


def _installed(session: nox.Session) -> dict[str, str]:
    """What the session's environment holds (editable and local installs left out)."""
    if _uses_uv(session):
        python = Path(session.bin) / ("python.exe" if sys.platform == "win32" else "python")
        command = [nox.virtualenv.UV, "pip", "freeze", "--python", str(python)]
    else:
        command = [str(Path(session.bin) / "python"), "-m", "pip", "freeze"]
    output = session.run(*command, silent=True, external=True, log=False) or ""
    return _pins(output.splitlines())


def install_environment(
    session: nox.Session,
    environment: str,
    *options: str,
    requirements: list[str] | None = None,
    local: tuple[str, ...] = (),
) -> None:
    """Install ``environment``'s requirements (or ``requirements`` standing for them),
    constrained by its lock file; then check that the lock covered everything installed but
    the ``local`` distributions of this repository (a lock older than a pyproject change
    fails here, with the command that refreshes it). Unlocked (``TRACKMUX_LOCKS=0``), install
    the newest releases and say how they differ from the lock."""
    requirements = requirements or ENVIRONMENTS[environment]
    lock = lock_file(environment)
    rel = lock.relative_to(ROOT).as_posix()
    if not _locked():
        session.install(*requirements, *options)
        _report_drift(session, environment, lock)
        return
    if not lock.is_file():
        session.error(f"{rel} is missing: run `nox -s lock` and commit requirements/")
    session.install(*requirements, "-c", str(lock), *options)
    locked = _pins(lock.read_text(encoding="utf-8").splitlines())
    unlocked = sorted(
        f"{name}=={version}"
        for name, version in _installed(session).items()
        if locked.get(name) != version and name != "torch" and name not in local
    )
    if unlocked:
        session.error(
            f"{rel} does not pin {', '.join(unlocked)}: the lock is older than a change to "
            "the requirements; run `nox -s lock` and commit requirements/"
        )


def _report_drift(session: nox.Session, environment: str, lock: Path) -> None:
    locked = _pins(lock.read_text(encoding="utf-8").splitlines()) if lock.is_file() else {}
    installed = _installed(session)
    moved = {
        name: [locked.get(name), version]
        for name, version in sorted(installed.items())
        if name != "torch" and locked.get(name) != version and not name.startswith("trackmux")
    }
    for name, (old, new) in moved.items():
        session.log(f"not as locked: {name} {old or '(new)'} -> {new}")
    drift_dir = os.environ.get("TRACKMUX_DRIFT_DIR")
    if drift_dir:
        Path(drift_dir).mkdir(parents=True, exist_ok=True)
        (Path(drift_dir) / f"{environment}.json").write_text(json.dumps(moved), encoding="utf-8")


# --------------------------------------------------------------------------- wheels
#
# Sessions that test this repository as users install it build its distributions into a
# wheelhouse and install them from there, not editable: a file missing from a wheel, a wrong
# package path or a broken entry point fails there, as it would for a user. The build
# backend (hatchling) comes from the index into uv's isolated build environment.

CHECK_WHEELHOUSE = ROOT / "tools" / "check_wheelhouse.py"


def _distribution(directory: Path) -> str:
    return _canonical(_load_toml(directory / "pyproject.toml")["project"]["name"])


def _as_distributions(requirements: list[str]) -> tuple[list[str], list[Path]]:
    """``requirements`` with each folder of this repository (``-e .[test]``,
    ``-e plugins/trackmux-mlflow``) replaced by its distribution's name (``trackmux[test]``,
    ``trackmux-mlflow``), and those folders."""
    names, folders, args = [], [], iter(requirements)
    for arg in args:
        requirement = next(args) if arg == "-e" else arg
        path, bracket, extras = requirement.partition("[")
        folder = (ROOT / path).resolve()
        if (folder / "pyproject.toml").is_file():
            folders.append(folder)
            requirement = _distribution(folder) + bracket + extras
        names.append(requirement)
    return names, folders


def build_wheelhouse(
    session: nox.Session, folders: list[Path], wheelhouse: Path, *, check: bool
) -> None:
    """A wheel of each folder in ``wheelhouse`` (emptied first); with ``check``, each
    folder's sdist too, the wheel built from that sdist, and tools/check_wheelhouse.py's
    checks (metadata, contents, entry points, sdist = source, version ranges)."""
    from_source = wheelhouse.with_name(wheelhouse.name + "-from-source")
    for directory in (wheelhouse, from_source):
        if directory.is_dir():
            for path in directory.iterdir():
                path.unlink()
    wheelhouse.mkdir(parents=True, exist_ok=True)
    build = [nox.virtualenv.UV, "build", "--quiet", "--no-create-gitignore"]
    commands = []
    for folder in folders:
        if check:  # uv build without --wheel: the sdist, then the wheel built from it
            commands.append([*build, "--out-dir", str(wheelhouse), str(folder)])
            commands.append([*build, "--wheel", "--out-dir", str(from_source), str(folder)])
        else:
            commands.append([*build, "--wheel", "--out-dir", str(wheelhouse), str(folder)])
    _run_all(session, commands)
    if check:  # with nox's own Python, which has packaging, before the session has a venv
        session.run(
            sys.executable,
            str(CHECK_WHEELHOUSE),
            str(wheelhouse),
            str(from_source),
            *map(str, folders),
            external=True,
        )


def _run_all(session: nox.Session, commands: list[list[str]]) -> None:
    """Run independent commands a few at a time (a build mostly waits on its isolated
    environment); each failure is reported with its output."""
    jobs = max(2, os.cpu_count() or 2)
    session.log(f"{len(commands)} commands, {jobs} at a time:")
    for command in commands:
        session.log(f"  {shlex.join(command)}")
    with ThreadPoolExecutor(jobs) as pool:
        done = list(pool.map(lambda c: subprocess.run(c, capture_output=True, text=True), commands))
    failed = [f"{shlex.join(r.args)}:\n{r.stdout}{r.stderr}" for r in done if r.returncode]
    if failed:
        session.error("\n".join(failed))


CHECK_INSTALLED = ROOT / "tools" / "check_installed.py"


def install_from_wheelhouse(
    session: nox.Session, environment: str, *options: str, wheelhouse: Path | None = None
) -> None:
    """Install ``environment`` as users install: its folders of this repository as wheels
    (``pip install --find-links WHEELHOUSE trackmux-mlflow[test] ...``), the rest from the
    index, all within its lock; then check that what is installed is those wheels' files and
    that ``trackmux plugins`` lists each plugin. Without ``wheelhouse``, build one."""
    requirements, folders = _as_distributions(ENVIRONMENTS[environment])
    if wheelhouse is None:
        wheelhouse = Path(session.create_tmp()) / "wheelhouse"
        build_wheelhouse(session, folders, wheelhouse, check=False)
    local = [_distribution(folder) for folder in folders]
    built = {w: parse_wheel_filename(w.name)[:2] for w in sorted(wheelhouse.glob("*.whl"))}
    wheels = [wheel for wheel, (name, _) in built.items() if name in local]
    # the built versions, so that no index's release of the same name can stand in for them
    pins = Path(session.create_tmp()) / "wheelhouse-constraints.txt"
    pins.write_text("".join(f"{name}=={version}\n" for name, version in built.values()))
    refresh = [f"--refresh-package={name}" for name in local] if _uses_uv(session) else []
    install_environment(
        session,
        environment,
        "--find-links",
        str(wheelhouse),
        "-c",
        str(pins),
        *refresh,
        *options,
        requirements=requirements,
        local=tuple(local),
    )
    session.run("python", str(CHECK_INSTALLED), *map(str, wheels))
    _check_plugins_listing(session, folders)


def _check_plugins_listing(session: nox.Session, folders: list[Path]) -> None:
    """``trackmux plugins``, the console script as installed, lists every plugin among
    ``folders`` as available, with its distribution and version."""
    session.run("trackmux", "plugins")
    output = session.run("trackmux", "plugins", "--json", silent=True) or "{}"
    # stderr comes with it: the JSON object starts at the first brace
    listing, _ = json.JSONDecoder().raw_decode(output, output.index("{"))
    rows = {row["name"]: row for row in listing.get("plugins", [])}
    for folder in folders:
        pyproject = _load_toml(folder / "pyproject.toml")
        for name in pyproject["project"].get("entry-points", {}).get("trackmux", {}):
            row = rows.get(name, {})
            wanted = (_distribution(folder), pyproject["project"]["version"], "available")
            got = (_canonical(row.get("distribution") or ""), row.get("version"), row.get("status"))
            if got != wanted:
                session.error(f"trackmux plugins lists {name!r} as {got}, not {wanted}: {row}")


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
    install_environment(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def tests(session: nox.Session) -> None:
    """Core test suite (tests/, minus tests/integration which needs every plugin and
    tests/frameworks which needs transformers or Lightning); matplotlib for ``trackmux plot``."""
    setup(session, "tests")
    run_pytest(session, ROOT / "tests", "--ignore=tests/integration", "--ignore=tests/frameworks")


@nox.session
@nox.parametrize("name", list(PLUGIN_IDS), ids=list(PLUGIN_IDS))
def plugin(session: nox.Session, name: str) -> None:
    """One tracker plugin, installed alone next to the core, against its own tests."""
    plugin_dir = PLUGIN_IDS[name]
    rel = plugin_dir.relative_to(ROOT).as_posix()
    setup(session, f"plugin-{name}", from_wheels=True)
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
    """Core + ALL plugins in one environment, as users install them: a wheelhouse of the
    core and every plugin (sdists too) is built and checked (see ``wheelhouse``); the core
    and every plugin that installs with the others are installed from it, not editable;
    then the dependency check, ``trackmux plugins`` and tests/integration, which train
    through each of those plugins. (A plugin tested alone gets its wheel in its own
    ``plugin(<id>)`` session.)"""
    wheelhouse = Path(session.create_tmp()) / "wheelhouse"
    build_wheelhouse(session, [ROOT, *PLUGINS], wheelhouse, check=True)
    setup(session, "integration", from_wheels=True, wheelhouse=wheelhouse)
    _pip_check(session)
    run_pytest(session, ROOT / "tests" / "integration")


@nox.session(venv_backend="none")
def wheelhouse(session: nox.Session) -> None:
    """dist/wheelhouse/: a wheel and an sdist of the core and of every plugin, checked
    (metadata and README, each package's files, entry points, the sdist builds the same
    wheel, every range on a distribution of this repository admits the version built).
    ``pip install --find-links dist/wheelhouse trackmux-mlflow`` installs from it; see
    docs/releasing.md. Not in the default set: ``integration`` builds and checks the same."""
    build_wheelhouse(session, [ROOT, *PLUGINS], ROOT / "dist" / "wheelhouse", check=True)


@nox.session
def demo(session: nox.Session) -> None:
    """Run ``trackmux demo`` with the core and every plugin installed."""
    setup(session, "all-plugins")
    output_dir = Path(session.create_tmp()) / "demo"
    session.run("trackmux", "demo", "--output-dir", str(output_dir), *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """benchmarks/run.py with the core and every plugin installed (posargs pass through):
    by default the cost of tracking as a user meets it (issue 14), dispatch, memory, start-up."""
    setup(session, "all-plugins")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """mkdocs build --strict (site/ is git-ignored)."""
    setup(session, "docs")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(name="bench-peers")
def bench_peers(session: nox.Session) -> None:
    """benchmarks/run.py against the peers too: core, every plugin, Hugging Face transformers
    (with accelerate, which its Trainer needs) and Lightning, matplotlib for the charts
    (posargs pass through; without any, the old method's steady window, where the peers run,
    and the other parts)."""
    setup(session, "bench-peers")
    parts = ["--parts", "steps,dispatch,memory,startup"]
    session.run("python", "benchmarks/run.py", *(session.posargs or parts))


def _framework_session(session: nox.Session, environment: str, *test_files: str) -> None:
    """Some files of tests/frameworks in their environment (see _framework_environment)."""
    setup(session, environment)
    others = [
        f"--ignore={path.relative_to(ROOT).as_posix()}"
        for path in _test_files(ROOT / "tests" / "frameworks")
        if path.name not in test_files
    ]
    run_pytest(session, ROOT / "tests" / "frameworks", *others)


@nox.session
def transformers(session: nox.Session) -> None:
    """TrackmuxCallback in the real Hugging Face transformers Trainer; trackmux's Trainer as a
    drop-in for transformers' (same numbers, arguments and schedules, checkpoints both ways)."""
    _framework_session(
        session,
        "transformers",
        "test_transformers.py",
        "test_transformers_args.py",
        "test_transformers_dropin.py",
    )


@nox.session
def lightning(session: nox.Session) -> None:
    """TrackmuxLogger in a real Lightning Trainer."""
    _framework_session(session, "lightning", "test_lightning.py")


@nox.session
def everywhere(session: nox.Session) -> None:
    """examples/everywhere.py: trackmux's Trainer, transformers, Lightning and a plain loop
    reporting the same way to one MLflow server."""
    _framework_session(session, "everywhere", "test_everywhere.py")


# --------------------------------------------------------------------------- locks


def _lock_input(environment: str, directory: Path) -> Path:
    """The environment's requirements as a requirements file uv can compile: local
    distributions by absolute path, torch as the wheel or version the sessions install."""
    lines, args = [], iter(ENVIRONMENTS[environment])
    for arg in args:
        editable = arg == "-e"
        requirement = next(args) if editable else arg
        if requirement.startswith("."):  # a folder of this repository, maybe with [extras]
            path, bracket, extras = requirement.partition("[")
            requirement = f"{(ROOT / path).resolve().as_posix()}{bracket}{extras}"
        lines.append(f"-e {requirement}" if editable else requirement)
    if environment not in WITHOUT_TORCH:
        spec = shlex.split(os.environ.get("TRACKMUX_TORCH", "").strip() or DEFAULT_TORCH)[0]
        wheel = _local_torch_wheel(spec)
        lines.append(str(wheel) if wheel is not None else spec)
    path = directory / f"{environment}.in"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _lock_text(compiled: str, environment: str, source: Path) -> str:
    """uv's output without this machine's paths: the local distributions (installed from
    their folders, never pinned) are dropped and the input file is named by what made it."""
    kept, skipping = [], False
    for line in compiled.splitlines():
        if line.startswith(("-e ", "/", "trackmux")):
            skipping = True  # its "# via" lines go with it
            continue
        if skipping and line.startswith("    #"):
            continue
        skipping = False
        kept.append(line.replace(f"-r {source}", f"noxfile.py ENVIRONMENTS[{environment!r}]"))
    python = ".".join(map(str, sys.version_info[:2]))
    header = [
        f"# requirements/{environment}.txt: the lock of nox environment {environment!r}",
        f"# (noxfile.py ENVIRONMENTS), resolved for Python {python} on {sys.platform};",
        "# used as constraints by its sessions. Refresh: nox -s lock",
    ]
    return "\n".join(header + kept) + "\n"


@nox.session(venv_backend="none")
def lock(session: nox.Session) -> None:
    """Regenerate requirements/<environment>.txt for every environment (or those named after
    ``--``) from the newest releases that satisfy the pyproject ranges: ``nox -s lock``, then
    run ``nox`` and commit requirements/ if it passes."""
    wanted = session.posargs or list(ENVIRONMENTS)
    unknown = sorted(set(wanted) - set(ENVIRONMENTS))
    if unknown:
        session.error(f"unknown environments {unknown}; known: {sorted(ENVIRONMENTS)}")
    LOCK_DIR.mkdir(exist_ok=True)
    work = Path(session.create_tmp()) / "lock"
    work.mkdir(exist_ok=True)
    python = ".".join(map(str, sys.version_info[:2]))
    for environment in wanted:
        source = _lock_input(environment, work)
        compiled = work / f"{environment}.txt"
        session.run(
            nox.virtualenv.UV,
            "pip",
            "compile",
            "--quiet",
            "--python-version",
            python,
            "--no-emit-package",
            "torch",
            "--custom-compile-command",
            "nox -s lock",
            "--output-file",
            str(compiled),
            str(source),
            external=True,
        )
        text = _lock_text(compiled.read_text(encoding="utf-8"), environment, source)
        lock_file(environment).write_text(text, encoding="utf-8")
    stale = sorted(path.name for path in LOCK_DIR.glob("*.txt") if path.stem not in ENVIRONMENTS)
    for name in stale:
        session.warn(f"requirements/{name} belongs to no environment: delete it")


@nox.session(venv_backend="none")
def latest(session: nox.Session) -> None:
    """The default sessions (or those named after ``--``) against the newest releases, in
    .nox-latest/ so the locked environments stay: which sessions broke and which versions
    moved since the lock. Not in the default set: drift is looked at on purpose."""
    work = ROOT / ".nox-latest"
    drift_dir = work / "drift"
    if drift_dir.is_dir():
        for old in drift_dir.glob("*.json"):
            old.unlink()
    report = work / "report.json"
    work.mkdir(exist_ok=True)
    sessions = session.posargs or nox.options.sessions
    session.run(
        sys.executable,
        "-m",
        "nox",
        "--envdir",
        str(work),
        "--report",
        str(report),
        "--sessions",
        *sessions,
        env={"TRACKMUX_LOCKS": "0", "TRACKMUX_DRIFT_DIR": str(drift_dir)},
        success_codes=[0, 1],
        external=True,
    )
    results = json.loads(report.read_text(encoding="utf-8")).get("sessions", [])
    broken = [
        r["signatures"][0] if r.get("signatures") else r["name"]
        for r in results
        if r.get("result") == "failed"
    ]
    moved: dict[str, list[str]] = {}
    for path in sorted(drift_dir.glob("*.json")):
        for name, (old, new) in json.loads(path.read_text(encoding="utf-8")).items():
            moved.setdefault(f"{name} {old or '(new)'} -> {new}", []).append(path.stem)
    session.log("versions newer than the locks (environments):")
    for change, environments in sorted(moved.items()):
        session.log(f"  {change} ({', '.join(environments)})")
    if broken:
        session.error(f"broken against the newest releases: {', '.join(broken)}")
    session.log("every session passed against the newest releases: `nox -s lock` takes them")


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
