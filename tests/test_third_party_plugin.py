"""A tracker plugin published outside this repository works the way a user installs it.

One fresh virtual environment per test session gets the core and
``examples/trackmux-example-plugin`` (the ``csvlog`` tracker) installed from their folders, not
editable, like wheels from PyPI. In it: a training reports to ``report_to=["csvlog"]``, the
plugin's own test suite passes with no conftest of its own, ``trackmux plugins`` lists it, and
the tutorial's hook example runs. The tutorial's code blocks are checked against the example's
files without any environment.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import sys
import textwrap
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import pytest

from trackmux.testing import describe_child, run_child

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "trackmux-example-plugin"
TUTORIAL = ROOT / "docs" / "plugins" / "writing.md"
TORCH = "torch==2.13.0"
WHEEL_DIR = Path("/opt/wheels")
# tutorial code blocks titled with these names are runnable snippets, not example files
SNIPPETS = ("model_size.py",)
# what the venv must not inherit from this process: another venv, this pytest run's options,
# the trackmux switches a test may have set
INHERITED = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV")
INHERITED_PREFIXES = ("TRACKMUX_", "PYTEST_")


@dataclass
class Venv:
    python: Path
    installer: str
    seconds: float

    def run(self, *arguments, cwd, timeout=300):
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in INHERITED and not key.startswith(INHERITED_PREFIXES)
        }
        # keep the example's source tree clean of __pycache__
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return run_child(
            [str(self.python), *arguments], cwd=cwd, env=env, timeout=timeout, check=False
        )


def _checked(command, **options):
    # no deadline, as before: installing torch from an index can take long
    result = run_child(command, timeout=None, check=False, **options)
    assert result.returncode == 0, describe_child(result)
    return result


def _torch_requirement() -> str:
    """The local CPU wheel of torch 2.13.0 that fits this interpreter, else the pin."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    for wheel in sorted(WHEEL_DIR.glob("torch-2.13.0*.whl")):
        if parse_wheel_filename(wheel.name)[3] & supported:
            return str(wheel)
    return TORCH


def _uv() -> list[str] | None:
    found = shutil.which("uv")
    if found and run_child([found, "--version"], check=False).returncode == 0:
        return [found]
    if importlib.util.find_spec("uv") is not None:
        return [sys.executable, "-m", "uv"]
    return None


def _venv_python(directory: Path) -> Path:
    return directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    began = time.monotonic()
    directory = tmp_path_factory.mktemp("third-party") / "venv"
    torch = _torch_requirement()
    requirements = [torch, str(ROOT), f"{EXAMPLE}[test]"]
    uv = _uv()
    if uv is not None:
        _checked([*uv, "venv", "--quiet", "--python", sys.executable, str(directory)])
        python = _venv_python(directory)
        env = dict(os.environ)
        if torch == TORCH:  # from an index: never let uv pick a multi-GB CUDA build
            env.setdefault("UV_TORCH_BACKEND", "cpu")
        # uv reuses a wheel it built from a folder until that folder's pyproject.toml
        # changes: rebuild both from the sources under test
        refresh = ["--refresh-package", "trackmux", "--refresh-package", "trackmux-csvlog"]
        _checked(
            [*uv, "pip", "install", "--quiet", "--python", str(python), *refresh, *requirements],
            env=env,
        )
        installer = "uv"
    else:
        _checked([sys.executable, "-m", "venv", str(directory)])
        python = _venv_python(directory)
        _checked([str(python), "-m", "pip", "install", "--quiet", *requirements])
        installer = "pip"
    yield Venv(python, installer, time.monotonic() - began)
    shutil.rmtree(directory, ignore_errors=True)  # about 1 GB, mostly torch


TRAIN = """
import json, sys
from trackmux import Trainer, TrainingArguments
from trackmux.plugins import get_registry
from trackmux.report_to import resolve
from trackmux.testing.toy import RegressionDataset, TinyRegressor

trainer = Trainer(
    model=TinyRegressor(),
    args=TrainingArguments(
        output_dir=sys.argv[1], run_name="third-party", report_to=["csvlog"], max_steps=6,
        logging_steps=2, eval_strategy="steps", eval_steps=3, per_device_train_batch_size=8,
        learning_rate=0.01, tracker_strict=True, disable_tqdm=True,
    ),
    train_dataset=RegressionDataset(32),
    eval_dataset=RegressionDataset(16, seed=1),
    hyperparameters={"dataset": {"name": "toy"}},
)
trainer.train()
info = get_registry().get("csvlog")
print(json.dumps({
    "log_history": trainer.state.log_history,
    "where": dict(trainer.trackers.where()),
    "distribution": info.distribution,
    "all": [chosen.name for chosen in resolve("all", get_registry()).chosen],
}))
"""


def _read_csv(path: Path) -> tuple[list[str], dict[str, list[tuple[int, float]]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        metrics: dict[str, list[tuple[int, float]]] = {}
        for step, name, value in reader:
            metrics.setdefault(name, []).append((int(step), float(value)))
    return header, metrics


@pytest.mark.slow
def test_training_reports_to_csvlog(venv, tmp_path):
    result = venv.run("-c", TRAIN, str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 0, describe_child(result)
    report = json.loads(result.stdout.splitlines()[-1])
    run_dir = tmp_path / "out" / "csvlog" / "third-party"
    assert report["distribution"] == "trackmux-csvlog"
    assert report["all"] == ["jsonl", "csvlog"], "installing the plugin is the opt-in to 'all'"
    assert report["where"]["csvlog"] == str(run_dir / "metrics.csv")

    header, metrics = _read_csv(run_dir / "metrics.csv")
    assert header == ["step", "name", "value"]
    history = report["log_history"]
    train_logs = [entry for entry in history if "loss" in entry]
    eval_logs = [entry for entry in history if "eval_loss" in entry]
    assert [entry["step"] for entry in train_logs] == [2, 4, 6]
    assert metrics["train/loss"] == [(entry["step"], entry["loss"]) for entry in train_logs]
    assert metrics["train/learning_rate"] == [
        (entry["step"], entry["learning_rate"]) for entry in train_logs
    ]
    assert metrics["eval/loss"] == [(entry["step"], entry["eval_loss"]) for entry in eval_logs]
    assert [step for step, _ in metrics["eval/loss"]] == [3, 6]
    assert "epoch" not in metrics and "train/epoch" not in metrics
    summary = next(entry for entry in history if "train_runtime" in entry)
    assert metrics["train/train_loss"] == [(6, summary["train_loss"])]

    params = json.loads((run_dir / "params.json").read_text(encoding="utf-8"))
    assert params["learning_rate"] == 0.01
    assert params["max_steps"] == 6
    assert params["dataset/name"] == "toy"
    assert params["model/hidden"] == 16
    assert (run_dir / "status.txt").read_text(encoding="utf-8") == "success\n"


@pytest.mark.slow
def test_example_plugin_tests_pass_without_a_conftest(venv, tmp_path):
    assert not list(EXAMPLE.rglob("conftest.py"))
    report = tmp_path / "junit.xml"
    # run from the plugin's folder, as its author would; no cache written into the tree
    result = venv.run(
        "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={report}", "tests", cwd=EXAMPLE
    )
    assert result.returncode == 0, describe_child(result)
    suite = ElementTree.parse(report).getroot().find("testsuite")
    names = {case.get("name") for case in suite.iter("testcase")}
    assert int(suite.get("failures")) == 0 and int(suite.get("errors")) == 0
    # the inherited conformance tests ran, with the trackmux fixtures from pytest11
    assert {
        "test_every_metric_at_every_step",
        "test_resume_continues_the_same_run",
        "test_status_when_training_ends_early[error1-killed]",
        "test_report_to_by_name_writes_under_output_dir",
    } <= names
    assert int(suite.get("tests")) - int(suite.get("skipped")) >= 10


@pytest.mark.slow
def test_trackmux_plugins_lists_csvlog(venv, tmp_path):
    result = venv.run("-m", "trackmux", "plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, describe_child(result)
    rows = {row["name"]: row for row in json.loads(result.stdout)["plugins"]}
    assert rows["csvlog"]["status"] == "available"
    assert rows["csvlog"]["distribution"] == "trackmux-csvlog"
    assert rows["csvlog"]["version"] == "0.1.0"
    assert rows["csvlog"]["builtin"] is False
    assert rows["csvlog"]["mode"] == "local"
    # the console script a user types
    script = venv.python.parent / ("trackmux.exe" if os.name == "nt" else "trackmux")
    table = _checked([str(script), "plugins"], cwd=tmp_path).stdout
    assert re.search(r"^csvlog\s+trackmux-csvlog 0\.1\.0\s+-\s+available", table, re.M), table


@pytest.mark.slow
def test_tutorial_hook_example_runs(venv, tmp_path):
    (tmp_path / "model_size.py").write_text(_tutorial_blocks()["model_size.py"][0])
    script = textwrap.dedent(
        """
        from model_size import ModelSizeCsvLog
        from trackmux import Trainer, TrainingArguments
        from trackmux.testing.toy import RegressionDataset, TinyRegressor
        from trackmux_csvlog import read_metrics

        model = TinyRegressor()
        args = TrainingArguments(
            output_dir="out", run_name="sized", report_to="none", max_steps=2,
            tracker_strict=True, disable_tqdm=True,
        )
        tracker = ModelSizeCsvLog(dir="runs")
        Trainer(model, args, train_dataset=RegressionDataset(16), trackers=[tracker]).train()
        expected = sum(p.numel() for p in model.parameters())
        assert read_metrics("runs/sized")["model/parameters"] == [(2, expected)]
        """
    )
    result = venv.run("-c", script, cwd=tmp_path)
    assert result.returncode == 0, describe_child(result)


# --------------------------------------------------------------------------- the tutorial

_BLOCK = re.compile(r'^```\w*[ \t]+title="(?P<title>[^"]+)"[^\n]*\n(?P<body>.*?)^```', re.M | re.S)


def _tutorial_blocks() -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for match in _BLOCK.finditer(TUTORIAL.read_text(encoding="utf-8")):
        blocks.setdefault(match["title"], []).append(match["body"])
    return blocks


def test_tutorial_shows_the_example_files_verbatim():
    blocks = _tutorial_blocks()
    assert set(SNIPPETS) <= set(blocks)
    shown = {title: bodies for title, bodies in blocks.items() if title not in SNIPPETS}
    assert {
        "pyproject.toml",
        "src/trackmux_csvlog/__init__.py",
        "src/trackmux_csvlog/tracker.py",
        "tests/test_csvlog.py",
    } <= set(shown)
    for title, bodies in shown.items():
        path = EXAMPLE / title
        assert path.is_file(), f"the tutorial shows {title}, which the example does not have"
        text = path.read_text(encoding="utf-8")
        covered: set[int] = set()
        for body in bodies:
            start = text.find(body)
            assert start >= 0, f"a block titled {title} differs from the file:\n{body}"
            first = text.count("\n", 0, start)
            covered.update(range(first, first + body.count("\n")))
        # every line of the file appears somewhere on the page
        missing = [
            line
            for number, line in enumerate(text.splitlines())
            if line.strip() and number not in covered
        ]
        assert not missing, f"{title}: lines the tutorial does not show: {missing}"
