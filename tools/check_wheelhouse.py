"""Check a wheelhouse before anything installs from it (``nox -s wheelhouse``, ``integration``).

    python tools/check_wheelhouse.py WHEELHOUSE FROM_SOURCE DIRECTORY...

WHEELHOUSE holds, for each DIRECTORY (the core's or a plugin's folder), an sdist and the wheel
built from that sdist; FROM_SOURCE holds the wheel built straight from the folder. For each
distribution: its metadata is valid and carries the README (what ``twine check`` looks at);
the wheel holds every file of its packages byte for byte, its entry points and console scripts
as pyproject.toml declares them, and no tests; the sdist builds the same wheel as the folder;
and every requirement on a distribution of this repository (a plugin's ``trackmux>=X,<Y``, the
core's extras) admits the version being built. Exit 1 with one line per problem.
"""

from __future__ import annotations

import configparser
import hashlib
import re
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.metadata import Metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def project(directory: Path) -> dict:
    return tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))


def declared_version(directory: Path, pyproject: dict) -> Version:
    """The version a folder declares in its one version source: ``[project] version``, or
    for a dynamic version the ``__version__`` of the file ``[tool.hatch.version] path``."""
    if "version" in pyproject["project"]:
        return Version(pyproject["project"]["version"])
    source = directory / pyproject["tool"]["hatch"]["version"]["path"]
    match = re.search(r'^__version__ = "([^"]+)"', source.read_text(encoding="utf-8"), re.M)
    return Version(match.group(1))


def package_files(directory: Path, pyproject: dict) -> dict[str, bytes]:
    """``{path in the wheel: bytes}`` of every file of the packages the wheel must hold."""
    files = {}
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        root = directory / package
        for path in root.rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[f"{root.name}/{path.relative_to(root).as_posix()}"] = path.read_bytes()
    return files


def declared_entry_points(pyproject: dict) -> dict[str, dict[str, str]]:
    groups = {g: dict(e) for g, e in pyproject["project"].get("entry-points", {}).items()}
    if pyproject["project"].get("scripts"):
        groups["console_scripts"] = dict(pyproject["project"]["scripts"])
    return groups


def wheel_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as wheel:
        return {name: wheel.read(name) for name in wheel.namelist()}


def digest(members: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}


def one(paths: list[Path], what: str, problems: list[str]) -> Path | None:
    if len(paths) != 1:
        problems.append(f"{what}: expected one file, found {[p.name for p in paths] or 'none'}")
        return None
    return paths[0]


def check(wheelhouse: Path, from_source: Path, directories: list[Path]) -> list[str]:
    problems: list[str] = []
    built: dict[str, Version] = {}
    requirements: list[tuple[str, Requirement]] = []
    for directory in directories:
        pyproject = project(directory)
        name = canonicalize_name(pyproject["project"]["name"])
        version = declared_version(directory, pyproject)
        built[name] = version
        where = f"{name} {version}"
        wheels = [p for p in wheelhouse.glob("*.whl") if parse_wheel_filename(p.name)[0] == name]
        sdists = [p for p in wheelhouse.glob("*.tar.gz") if parse_sdist_filename(p.name)[0] == name]
        wheel = one(wheels, f"{where}: wheel in {wheelhouse}", problems)
        sdist = one(sdists, f"{where}: sdist in {wheelhouse}", problems)
        if wheel is None or sdist is None:
            continue
        if parse_wheel_filename(wheel.name)[1] != version:
            problems.append(f"{where}: the wheel {wheel.name} has another version")
        members = wheel_members(wheel)
        info = next(n.split("/")[0] for n in members if n.endswith(".dist-info/METADATA"))
        try:
            metadata = Metadata.from_email(members[f"{info}/METADATA"], validate=True)
        except Exception as error:  # packaging raises an ExceptionGroup of every problem
            problems.append(f"{where}: invalid METADATA: {error!r}")
            continue
        if (canonicalize_name(metadata.name), metadata.version) != (name, version):
            problems.append(f"{where}: METADATA says {metadata.name} {metadata.version}")
        if not (metadata.description or "").strip() or metadata.description_content_type != (
            "text/markdown"
        ):
            problems.append(f"{where}: no Markdown README in the metadata (readme = ...)")
        requirements += [(where, requirement) for requirement in metadata.requires_dist or []]
        for path, data in package_files(directory, pyproject).items():
            if members.get(path) != data:
                state = "differs from" if path in members else "is missing, unlike"
                problems.append(f"{where}: {path} in the wheel {state} {directory.name}/")
        tests = [n for n in members if n.startswith("tests/") or "/tests/" in n]
        if tests:
            problems.append(f"{where}: the wheel ships tests: {tests[:3]}")
        parser = configparser.ConfigParser(delimiters=("=",))
        parser.optionxform = str  # entry point names are case-sensitive
        parser.read_string(members.get(f"{info}/entry_points.txt", b"").decode())
        shipped = {group: dict(parser[group]) for group in parser.sections()}
        if shipped != declared_entry_points(pyproject):
            problems.append(f"{where}: entry points {shipped} != pyproject's")
        rebuilt = [p for p in from_source.glob("*.whl") if parse_wheel_filename(p.name)[0] == name]
        rebuilt_wheel = one(rebuilt, f"{where}: wheel built from {directory.name}/", problems)
        if rebuilt_wheel is not None and digest(wheel_members(rebuilt_wheel)) != digest(members):
            problems.append(f"{where}: the sdist builds another wheel than {directory.name}/")
        with tarfile.open(sdist) as archive:
            top = sdist.name.removesuffix(".tar.gz")
            names = {n.removeprefix(f"{top}/") for n in archive.getnames()}
            pkg_info = archive.extractfile(f"{top}/PKG-INFO").read()
        sdist_version = Metadata.from_email(pkg_info, validate=False).version
        for needed in ("pyproject.toml", "README.md"):
            if needed not in names:
                problems.append(f"{where}: the sdist lacks {needed}")
        if sdist_version != version:
            problems.append(f"{where}: the sdist's PKG-INFO says version {sdist_version}")
    for where, requirement in requirements:
        target = canonicalize_name(requirement.name)
        if target in built and not requirement.specifier.contains(built[target], True):
            problems.append(
                f"{where} requires {requirement}, which does not admit {target} {built[target]} "
                "being built: change the range or the version (docs/releasing.md)"
            )
    return problems


def main(argv: list[str]) -> int:
    wheelhouse, from_source, *directories = (Path(a) for a in argv)
    problems = check(wheelhouse, from_source, directories)
    for problem in problems:
        print(f"wheelhouse: {problem}", file=sys.stderr)
    if not problems:
        print(f"wheelhouse: {len(directories)} distributions checked in {wheelhouse}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
