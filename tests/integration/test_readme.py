"""The README as a new user reads it: its first command's install set and its example, taken
from README.md at test time (never a copy), so the README cannot drift from what works.

This environment (nox -s integration) installs the core and every plugin: the test checks that
the README's install line names only distributions installed here, then runs the README's
first Python block, as written, in a child process in an empty folder, and checks what it
prints and the files it leaves."""

import importlib.metadata
import pathlib
import re
import shlex
import sys

import tomllib
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from trackmux.runlog import find_runs, read_run
from trackmux.testing import run_child

ROOT = pathlib.Path(__file__).parents[2]
README = ROOT / "README.md"
#: pip options whose next word is their value, not a requirement
VALUED_OPTIONS = {
    "-c",
    "--constraint",
    "-r",
    "--requirement",
    "-f",
    "--find-links",
    "-i",
    "--index-url",
    "--extra-index-url",
    "--python",
}


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), re.M | re.S)


def install_words(command: str) -> list[str]:
    """The words after ``pip install`` in the first such command of ``command``."""
    for part in re.split(r"&&|;|\n", command):
        words = shlex.split(part)
        for index in range(len(words) - 1):
            if words[index] == "pip" and words[index + 1] == "install":
                return words[index + 2 :]
    return []


def distributions(words: list[str]) -> set[str]:
    """The distributions an install line names: requirements, and local folders by their
    pyproject's name (``-e plugins/trackmux-mlflow``); a core extra (``trackmux[mlflow]``)
    names the distributions that extra pulls in."""
    names: set[str] = set()
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in VALUED_OPTIONS:
            skip = True
            continue
        if word.startswith("-"):
            continue
        folder = ROOT / word.split("[", 1)[0]
        if (folder / "pyproject.toml").is_file():
            project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
            names.add(canonicalize_name(project["name"]))
            extras = word[len(word.split("[", 1)[0]) :].strip("[]")
            names |= _extra_requirements(project["name"], extras)
            continue
        try:
            requirement = Requirement(word)
        except InvalidRequirement as error:
            raise AssertionError(f"README install line: {word!r} is not a requirement") from error
        names.add(canonicalize_name(requirement.name))
        names |= _extra_requirements(requirement.name, ",".join(requirement.extras))
    return names


def _extra_requirements(distribution: str, extras: str) -> set[str]:
    wanted = {extra.strip() for extra in extras.split(",") if extra.strip()}
    if not wanted:
        return set()
    found = set()
    for text in importlib.metadata.requires(distribution) or ():
        requirement = Requirement(text)
        marker = requirement.marker
        if marker and any(marker.evaluate({"extra": extra}) for extra in wanted):
            found.add(canonicalize_name(requirement.name))
    return found


def test_the_readme_install_line_names_only_what_this_environment_installs():
    quick_start = next(block for block in code_blocks("bash") if "pip install" in block)
    named = distributions(install_words(quick_start))
    assert canonicalize_name("trackmux") in named, quick_start
    missing = []
    for name in sorted(named):
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    assert not missing, (
        f"the README's first install line names {missing}, which this environment does not "
        "install: the example below would not be tested as a user runs it"
    )


def test_the_readme_example_runs_as_written(tmp_path):
    example = code_blocks("python")[0]
    script = tmp_path / "readme_example.py"
    script.write_text(example)
    done = run_child([sys.executable, str(script)], cwd=tmp_path)
    # it ends by saying where its data is: the run log first, then each tracker
    where = dict(
        line.split(": ", 1) for line in done.stdout.splitlines() if re.match(r"^\w+: ", line)
    )
    runs = find_runs(tmp_path / "out")
    assert len(runs) == 1, done.stdout
    run_dir = pathlib.Path(runs[0]).relative_to(tmp_path)
    assert where["jsonl"].startswith(f"{run_dir / 'events.jsonl'} (trackmux show {run_dir})")
    assert "tensorboard" in where and any((tmp_path / run_dir / "tensorboard").iterdir())
    log = read_run(runs[0])
    assert log.status == "success"
    losses = [value for _, value in log.history("train/loss")]
    # a visible result: the loss falls by orders of magnitude, not a few percent
    assert len(losses) == 10 and losses[-1] < losses[0] / 100, losses
    # the eval_dataset is used: evaluations during the run
    assert [step for step, _ in log.history("eval/loss")] == [50, 100, 150, 200]
