"""Names and install hints agree everywhere (docs/plugins/index.md#names).

Every plugin folder follows the one rule (tracker name -> distribution -> folder -> core
extra), and every ``pip install`` line that trackmux prints (``trackmux plugins``, the
``report_to`` errors) or that the docs, the README, the plugins' READMEs or the core's source
show names a distribution of this repository: the core, with its real extras, or one found
from plugins/*/pyproject.toml (and examples/*/pyproject.toml, the third-party example).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from trackmux.plugins import PluginRegistry, distribution_name
from trackmux.report_to import KNOWN_TRACKERS, ReportToError, resolve

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
CORE = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PLUGIN_DIRS = sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
EXAMPLE_DIRS = sorted(p.parent for p in ROOT.glob("examples/*/pyproject.toml"))
# a `pip install` command, up to what ends it in prose, a code block or a message
PIP_INSTALL = re.compile(r"pip install ([^`\n#;)]*)")
# option arguments that are no distribution (a wheelhouse, a constraints file, ...)
OPTIONS_WITH_ARGUMENT = {"--find-links", "-f", "-c", "-r", "--constraint", "--index-url"}


def project(directory: Path) -> dict:
    return tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def distributions() -> set[str]:
    return {"trackmux"} | {
        canonicalize_name(project(directory)["name"]) for directory in PLUGIN_DIRS + EXAMPLE_DIRS
    }


def plugin_extras() -> dict[str, list[str]]:
    """The core's extras that install plugins of this repository."""
    return {
        extra: requirements
        for extra, requirements in CORE["optional-dependencies"].items()
        if any(canonicalize_name(Requirement(r).name).startswith("trackmux-") for r in requirements)
    }


@pytest.mark.parametrize("directory", PLUGIN_DIRS, ids=lambda p: p.name)
def test_every_plugin_follows_the_naming_rule(directory):
    meta = project(directory)
    names = list(meta.get("entry-points", {}).get("trackmux", {}))
    assert names, f"{directory.name} declares no [project.entry-points.trackmux] tracker"
    for name in names:
        assert distribution_name(name) == meta["name"], (
            f"tracker {name!r} must be distribution {distribution_name(name)!r} "
            f"(docs/plugins/index.md#names), not {meta['name']!r}"
        )
    assert directory.name == meta["name"], f"the folder must be plugins/{meta['name']}/"
    assert name in KNOWN_TRACKERS, f"report_to.KNOWN_TRACKERS must list {name!r}"
    extra = meta["name"].removeprefix("trackmux-")
    wanted = [r for r in CORE["optional-dependencies"].get(extra, [])]
    assert [canonicalize_name(Requirement(r).name) for r in wanted] == [meta["name"]], (
        f'the core\'s pyproject.toml needs the extra {extra} = ["{meta["name"]}>=X,<Y"]'
    )


def test_every_known_tracker_and_plugin_extra_is_a_distribution_of_this_repository():
    real = distributions()
    for name in KNOWN_TRACKERS:
        assert distribution_name(name) in real, f"{name!r}: no plugins/{distribution_name(name)}"
    for extra, requirements in plugin_extras().items():
        for requirement in requirements:
            assert canonicalize_name(Requirement(requirement).name) in real, (extra, requirement)


def commands(text: str) -> list[str]:
    return [match.group(1).strip().rstrip(".,:") for match in PIP_INSTALL.finditer(text)]


def unreal(command: str, real: set[str]) -> list[str]:
    """What ``pip install <command>`` names that is not in this repository."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    bad, skip = [], False
    for word in words:
        if skip or word.startswith("-") or "{" in word or "<" in word:
            skip = word in OPTIONS_WITH_ARGUMENT
            continue
        if word.endswith((".whl", ".tar.gz")):
            name = Path(word).name
            parse = parse_wheel_filename if name.endswith(".whl") else parse_sdist_filename
            if not canonicalize_name(parse(name)[0]).startswith("trackmux"):
                continue
            if canonicalize_name(parse(name)[0]) not in real:
                bad.append(word)
            continue
        path, _, _ = word.partition("[")
        if path.startswith((".", "plugins/", "examples/")):
            if not (ROOT / path / "pyproject.toml").is_file():
                bad.append(word)
            continue
        try:
            requirement = Requirement(word)
        except InvalidRequirement:
            continue
        name = canonicalize_name(requirement.name)
        if not name.startswith("trackmux"):
            continue  # a backend, a tool
        if name not in real:
            bad.append(word)
        elif name == "trackmux":
            known = set(map(canonicalize_name, CORE["optional-dependencies"]))
            bad += [
                f"{word} (no extra {e})"
                for e in requirement.extras
                if canonicalize_name(e) not in known
            ]
    return bad


def documented_files() -> list[Path]:
    return [
        ROOT / "README.md",
        *sorted((ROOT / "docs").rglob("*.md")),
        *sorted(ROOT.glob("plugins/*/README.md")),
        *sorted((ROOT / "src" / "trackmux").rglob("*.py")),
    ]


@pytest.mark.parametrize("path", documented_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_documented_install_names_a_real_distribution(path):
    real = distributions()
    found = {c: unreal(c, real) for c in commands(path.read_text(encoding="utf-8"))}
    assert {c: bad for c, bad in found.items() if bad} == {}


def test_the_check_catches_a_wrong_name():
    real = distributions()
    assert unreal("-e plugins/trackmux-comet", real) == ["plugins/trackmux-comet"]
    assert unreal('"trackmux[mlflow,comet_ml]" trackmux-azureml', real) == ["trackmux-azureml"]
    assert unreal('"trackmux[mlfow]"', real) == ["trackmux[mlfow] (no extra mlfow)"]
    assert unreal("--find-links WHEELHOUSE trackmux-comet-ml 'mlflow>=2.10'", real) == []


def printed_hints(capsys, monkeypatch) -> str:
    from trackmux.cli import main

    # no plugin loaded: every known tracker is "not installed" and gets its hint
    monkeypatch.setenv("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD", "1")
    for arguments in (["plugins"], ["plugins", "--json"]):
        assert main(arguments) == 0
    out = capsys.readouterr().out
    listing = json.loads(out[out.index("{") :])
    table = out[: out.index("{")]
    texts = [table, *(c for row in listing["not_installed"] for c in row["install"].values())]
    monkeypatch.delenv("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD")
    for name in [*KNOWN_TRACKERS, "tensorbord", "no_such_tracker"]:
        with pytest.raises(ReportToError) as error:
            resolve([name], PluginRegistry())
        texts.append(str(error.value))
    return "\n".join(texts)


def test_every_printed_install_names_a_real_distribution(capsys, monkeypatch):
    text = printed_hints(capsys, monkeypatch)
    real = distributions()
    found = commands(text)
    for name in KNOWN_TRACKERS:  # each gets the three ways to install it
        dist = distribution_name(name)
        for command in (f"-e plugins/{dist}", f"--find-links WHEELHOUSE {dist}", dist):
            assert command in found, f"no `pip install {command}` among the hints"
    assert {c: bad for c in found if (bad := unreal(c, real))} == {}
