"""tools/check_wheelhouse.py finds the packaging mistakes it is there for, on small
distributions made here (the real wheelhouse is built and checked by ``nox -s integration``)."""

from __future__ import annotations

import importlib.util
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location(
    "check_wheelhouse", ROOT / "tools" / "check_wheelhouse.py"
)
check_wheelhouse = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(check_wheelhouse)

PYPROJECT = """
[project]
name = "{name}"
version = "{version}"
readme = "README.md"
dependencies = [{dependencies}]

[project.entry-points.trackmux]
{tracker} = "{package}"

[tool.hatch.build.targets.wheel]
packages = ["src/{package}"]
"""


def distribution(root: Path, name: str, version: str, requires: str = "", **broken) -> Path:
    """A folder, its sdist and its wheel (twice: from the sdist, from the folder)."""
    package = name.replace("-", "_")
    folder = root / name
    (folder / "src" / package).mkdir(parents=True)
    (folder / "src" / package / "__init__.py").write_text("VALUE = 1\n")
    (folder / "src" / package / "py.typed").write_text("")
    (folder / "README.md").write_text(f"# {name}\n")
    dependencies = f'"{requires}"' if requires else ""
    (folder / "pyproject.toml").write_text(
        PYPROJECT.format(
            name=name, version=version, dependencies=dependencies, tracker=package, package=package
        )
    )
    requires_dist = f"Requires-Dist: {requires}\n" if requires else ""
    metadata = (
        f"Metadata-Version: 2.3\nName: {name}\nVersion: {version}\n{requires_dist}"
        f"Description-Content-Type: text/markdown\n\n# {name}\n"
    )
    info = f"{package}-{version}.dist-info"
    members = {
        f"{package}/__init__.py": "VALUE = 1\n",
        f"{package}/py.typed": "",
        f"{info}/METADATA": metadata,
        f"{info}/entry_points.txt": f"[trackmux]\n{package} = {broken.get('entry', package)}\n",
    }
    for path in broken.get("missing", ()):
        del members[path.format(package=package)]
    for directory, extra in (("house", {}), ("source", broken.get("source_extra", {}))):
        (root / directory).mkdir(exist_ok=True)
        with zipfile.ZipFile(root / directory / f"{package}-{version}-py3-none-any.whl", "w") as w:
            for path, text in {**members, **extra}.items():
                w.writestr(path, text)
    top = f"{package}-{version}"
    with tarfile.open(root / "house" / f"{top}.tar.gz", "w:gz") as archive:
        for path, text in {
            "PKG-INFO": metadata,
            "pyproject.toml": (folder / "pyproject.toml").read_text(),
            "README.md": f"# {name}\n",
        }.items():
            data = text.encode()
            entry = tarfile.TarInfo(f"{top}/{path}")
            entry.size = len(data)
            archive.addfile(entry, io.BytesIO(data))
    return folder


def problems(tmp_path: Path, **broken) -> list[str]:
    core = distribution(tmp_path, "fake-core", "1.0")
    plugin = distribution(
        tmp_path, "fake-plugin", "0.1", broken.pop("requires", "fake-core>=1,<2"), **broken
    )
    return check_wheelhouse.check(tmp_path / "house", tmp_path / "source", [core, plugin])


def test_a_sound_wheelhouse_passes(tmp_path):
    assert problems(tmp_path) == []


def test_a_range_that_does_not_admit_the_version_built_fails(tmp_path):
    (problem,) = problems(tmp_path, requires="fake-core>=2,<3")
    assert "requires fake-core<3,>=2, which does not admit fake-core 1.0 being built" in problem


def test_a_file_missing_from_the_wheel_fails(tmp_path):
    (problem,) = problems(tmp_path, missing=["{package}/py.typed"])
    assert "fake_plugin/py.typed in the wheel is missing" in problem


def test_a_wrong_entry_point_fails(tmp_path):
    (problem,) = problems(tmp_path, entry="fake_plugin.nowhere")
    assert "entry points" in problem and "fake_plugin.nowhere" in problem


def test_an_sdist_that_builds_another_wheel_fails(tmp_path):
    (problem,) = problems(tmp_path, source_extra={"fake_plugin/extra.py": "X = 2\n"})
    assert "the sdist builds another wheel than fake-plugin/" in problem


@pytest.mark.parametrize("kind", ["whl", "tar.gz"])
def test_a_missing_wheel_or_sdist_fails(tmp_path, kind):
    distribution(tmp_path, "fake-core", "1.0")
    plugin = distribution(tmp_path, "fake-plugin", "0.1", "fake-core>=1,<2")
    for path in (tmp_path / "house").glob(f"fake_plugin-*.{kind}"):
        path.unlink()
    shutil.rmtree(tmp_path / "fake-core")
    found = check_wheelhouse.check(tmp_path / "house", tmp_path / "source", [plugin])
    assert any("expected one file, found none" in p for p in found), found
