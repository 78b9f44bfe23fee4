"""The rule that keeps a failing child process from sending whoever reads CI's log off to
rerun a test by hand: a test that starts a process reports the child's output when it fails.

``subprocess.run(..., check=True)`` fails with ``CalledProcessError: ... exit status 1`` and
nothing else; an ``assert result.returncode == 0`` shows whatever its author thought to put in
the message, often nothing. So the test code of this repository (tests/, every plugin's
tests/, the helpers in trackmux.testing and each plugin's testing module) runs a child through
:func:`trackmux.testing.run_child`, which fails with the command, the exit status and the tail
of stdout and stderr, and puts :func:`trackmux.testing.describe_child` in the message of the
assertions it makes on a result. A file that starts a ``Popen`` (to signal it mid-run) must
read its output with :func:`trackmux.testing.rest_of_output` or describe it with
``describe_child``: this test cannot check every assertion, only that the file uses one.

Production modules that run a process (a plugin's tracker) are not tests: the rule is not
theirs.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: the calls that capture nothing useful for a failure message, or raise without it
DIRECT = {"run", "call", "check_call", "check_output"}
#: the helper itself
EXEMPT = {"src/trackmux/testing/processes.py"}


def scanned_files() -> list[Path]:
    patterns = [
        "tests/**/*.py",
        "plugins/*/tests/**/*.py",
        "src/trackmux/testing/*.py",
        "plugins/*/src/*/testing.py",
        "benchmarks/test_*.py",
    ]
    found = {path for pattern in patterns for path in ROOT.glob(pattern)}
    return sorted(path for path in found if path.relative_to(ROOT).as_posix() not in EXEMPT)


def offences(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found, popen = [], False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "subprocess":
            for alias in node.names:
                if alias.name in DIRECT:
                    found.append(f"line {node.lineno}: from subprocess import {alias.name}")
                popen |= alias.name == "Popen"
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "subprocess"
        ):
            if node.attr in DIRECT:
                found.append(f"line {node.lineno}: subprocess.{node.attr}")
            popen |= node.attr == "Popen"
    text = path.read_text(encoding="utf-8")
    if popen and "describe_child" not in text and "rest_of_output" not in text:
        found.append("starts a subprocess.Popen but never uses describe_child or rest_of_output")
    return found


def test_the_scan_covers_the_test_files():
    names = {path.relative_to(ROOT).as_posix() for path in scanned_files()}
    assert "tests/test_trainer_process.py" in names
    assert "tests/reliability/reliability_helpers.py" in names
    assert "plugins/trackmux-mlflow/tests/test_mlflow.py" in names
    assert "plugins/trackmux-mlflow/src/trackmux_mlflow/testing.py" in names


def test_the_scan_finds_a_direct_call(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("import subprocess\nsubprocess.run(['true'], check=True)\n")
    assert offences(bad) == ["line 2: subprocess.run"]
    popen = tmp_path / "test_popen.py"
    popen.write_text("from subprocess import Popen\nPopen(['true']).wait()\n")
    assert offences(popen) == [
        "starts a subprocess.Popen but never uses describe_child or rest_of_output"
    ]


def test_every_child_process_in_the_tests_reports_its_output():
    found = {
        path.relative_to(ROOT).as_posix(): problems
        for path in scanned_files()
        if (problems := offences(path))
    }
    assert not found, (
        "run children through trackmux.testing.run_child (or put describe_child in the "
        "assertion message; read a Popen's output with rest_of_output), so that a failure "
        f"shows what the child printed: {found}"
    )
