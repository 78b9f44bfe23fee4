"""The Flyte plugin inside real flytekit tasks, executed locally, read back from the deck.html
flytekit writes and from the task's checkpoint.

The tasks run in one subprocess (tests/flyte_task.py) whose TMPDIR is a test directory:
flytekit chooses its sandbox, and so where deck.html lands, under TMPDIR when it is imported,
and leaves it behind. This process never imports flytekit, which also shows the plugin's
"outside a task" path with flytekit not loaded.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

from trackmux.testing import (
    TrackerConformance,
    assert_unavailable,
    describe_child,
    discovery_report,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux.testing.pytest_plugin import BACKEND_ENV_VARS
from trackmux_flyte.tracker import (
    ARTIFACTS_ENV,
    EXECUTION_ID_ENV,
    NO_TASK,
    NOT_LOADED,
    FlyteTracker,
)

TASK_SCRIPT = str(Path(__file__).with_name("flyte_task.py"))
INACTIVE = "the flyte tracker is inactive"
CHECKPOINTS = {"load_best_model_at_end": True}  # so that "best" names a checkpoint

# each one a toy training in a Flyte task (or outside one), all in one process: see flyte_task.py
SCENARIOS = {
    "history": {"evaluate": True},
    "all": {"report_to": "all"},
    "failed": {"stop_at": 5},
    "every-save": {"tracker_config": {"flyte": {"artifacts": "checkpoint"}}},
    "best-code-over-env": {
        "tracker_config": {"flyte": {"artifacts": "best"}},
        "env": {ARTIFACTS_ENV: "checkpoint"},
        "overrides": CHECKPOINTS,
    },
    "final-model-from-env": {"env": {ARTIFACTS_ENV: "end"}},
    "no-decks": {"enable_deck": False},
    "outside": {
        "outside": True,
        "evaluate": True,
        "tracker_config": {"flyte": {"artifacts": "checkpoint"}},
    },
}


@pytest.fixture(autouse=True)
def _no_flyte_settings_from_the_outside(monkeypatch):
    for name in (ARTIFACTS_ENV, EXECUTION_ID_ENV):
        monkeypatch.delenv(name, raising=False)


@dataclass
class Executions:
    root: Path
    reports: dict[str, dict]
    decks: dict[str, Deck]  # by the output_dir its config table names

    def output_dir(self, scenario: str) -> Path:
        return self.root / scenario

    def deck(self, scenario: str) -> Deck:
        return self.decks[str(self.output_dir(scenario))]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> Executions:
    """Every scenario run once, in one subprocess whose TMPDIR (flytekit's sandbox) is ours."""
    root = tmp_path_factory.mktemp("flyte")
    scenarios = {
        name: {"output_dir": str(root / name), "report_to": ["jsonl", "flyte"], **spec}
        for name, spec in SCENARIOS.items()
    }
    cleared = {*BACKEND_ENV_VARS, ARTIFACTS_ENV, EXECUTION_ID_ENV}
    env = {name: value for name, value in os.environ.items() if name not in cleared}
    # what trackmux_env sets, for "all" to pick other installed plugins quietly and offline
    env.update(
        TMPDIR=str(root),
        TRACKMUX_STRICT="1",
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        COMET_ERROR_TRACKING_ENABLE="false",
    )
    done = run_child(
        [sys.executable, TASK_SCRIPT, json.dumps(scenarios)],
        env=env,
        cwd=root,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, describe_child(done)
    reports = json.loads(done.stdout.strip().splitlines()[-1])
    decks = {}
    for path in root.glob("**/deck.html"):
        deck = Deck(path.read_text(encoding="utf-8"))
        if "config" in deck.tables:
            decks[deck.pairs("config")["output_dir"]] = deck
    return Executions(root, reports, decks)


class Deck(HTMLParser):
    """What a deck.html holds: tables by class (rows of cell texts), charts (caption, number
    of points), paragraphs, and how many trackmux decks it contains."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.charts: list[tuple[str, int]] = []
        self.paragraphs: list[str] = []
        self.decks = 0
        self._table: list[list[str]] | None = None
        self._cell: list[str] | None = None
        self._text: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "div" and attributes.get("class") == "trackmux-flyte":
            self.decks += 1
        elif tag == "table" and attributes.get("class"):
            self._table = self.tables.setdefault(attributes["class"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag in ("p", "figcaption"):
            self._text = []
        elif tag == "polyline":
            self.charts.append((self.paragraphs.pop(), len(attributes["points"].split())))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell))
            self._cell = None
        elif tag in ("p", "figcaption") and self._text is not None:
            self.paragraphs.append("".join(self._text))
            self._text = None

    def handle_data(self, data):
        for sink in (self._cell, self._text):
            if sink is not None:
                sink.append(data)

    def column(self, name: str) -> list[tuple[int, str]]:
        """(step, cell text) of metric ``name`` in every row where it was logged."""
        header, *rows = self.tables["metrics"]
        index = header.index(name)
        return [(int(row[0]), row[index]) for row in rows if row[index] != ""]

    def pairs(self, table: str) -> dict[str, str]:
        return dict(self.tables[table][1:])


# -- inside a task ---------------------------------------------------------------------------


def test_the_deck_holds_every_logged_metric(tasks):
    report = tasks.reports["history"]
    log = jsonl_log(tasks.output_dir("history"))
    deck = tasks.deck("history")

    assert report["unconfigured"] is None and report["inactive"] is None
    assert report["warnings"] == []
    assert report["where"].startswith("Flyte deck 'training' of task ")
    # no artifact policy asked for: nothing synced
    assert report["synced"] == [] and report["restored"] is None
    # train() and the evaluate() after it finish the run twice: still one deck, the latest
    assert report["decks"].count("training") == 1 and deck.decks == 1
    header = deck.tables["metrics"][0]
    assert header[:2] == ["step", "epoch"]
    assert sorted(header[2:]) == sorted(log.metrics)
    for name, history in log.metrics.items():
        # the values as Python prints them: exactly the floats the jsonl log holds
        assert deck.column(name) == [(step, repr(value)) for step, value in history], name
    assert [step for step, _ in deck.column("eval/loss")] == [4, 8, 8]
    assert deck.pairs("summary") == {name: repr(value) for name, value in log.summary.items()}
    config = deck.pairs("config")
    assert len(config) == len(log.config)
    assert config["learning_rate"] == "0.01" and config["dataset"] == "toy-regression"
    assert "status: success" in deck.paragraphs
    # one line chart per metric, one point per logged value
    assert {caption.split(":")[0]: points for caption, points in deck.charts} == {
        name: len(history) for name, history in log.metrics.items()
    }


def test_report_to_all_picks_it_inside_a_task(tasks):
    report = tasks.reports["all"]
    assert report["unconfigured"] is None and report["where"]
    deck = tasks.deck("all")
    log = jsonl_log(tasks.output_dir("all"))
    assert deck.column("train/loss") == [
        (step, repr(value)) for step, value in log.history("train/loss")
    ]


def test_a_failed_training_caught_in_the_task_still_gets_its_deck(tasks):
    assert tasks.reports["failed"]["error"] == "boom"
    deck = tasks.deck("failed")
    assert "status: failed" in deck.paragraphs
    assert [step for step, _ in deck.column("train/loss")] == [2, 4]
    assert [step for step, _ in deck.column("eval/loss")] == [4]


@pytest.mark.parametrize(
    "scenario, synced, restored_step",
    [
        ("every-save", ["checkpoint-4", "checkpoint-8"], 8),
        ("best-code-over-env", ["checkpoint-8"], 8),
        ("final-model-from-env", ["final-model"], None),
    ],
)
def test_checkpoints_sync_to_the_task_checkpoint(tasks, scenario, synced, restored_step):
    report = tasks.reports[scenario]
    out = tasks.output_dir(scenario)
    assert report["synced"] == [str(out / name) for name in synced]
    # what the task's next attempt restores: the files of the last directory synced
    assert report["restored"] == sorted(os.listdir(out / synced[-1]))
    assert report.get("restored_step") == restored_step
    assert "status: success" in tasks.deck(scenario).paragraphs


def test_a_task_without_decks_trains_and_says_why_nothing_shows(tasks):
    report = tasks.reports["no-decks"]
    assert report["inactive"] is None and report["where"]
    assert report["warnings"] == [
        "the flyte tracker renders its deck, but this task has decks disabled: "
        "use @task(enable_deck=True) to see it"
    ]
    assert str(tasks.output_dir("no-decks")) not in tasks.decks
    log = jsonl_log(tasks.output_dir("no-decks"))
    assert [step for step, _ in log.history("train/loss")] == [2, 4, 6, 8]


# -- outside a task --------------------------------------------------------------------------


def test_outside_a_task_with_flytekit_loaded_it_warns_once_and_stays_idle(tasks):
    report = tasks.reports["outside"]
    assert report["unconfigured"] == NO_TASK
    assert report["inactive"] == NO_TASK
    assert report["where"] is None and report["synced"] == []
    # train() and evaluate(): one warning
    assert report["warnings"] == [f"{INACTIVE} ({NO_TASK}); training goes on without it"]
    assert str(tasks.output_dir("outside")) not in tasks.decks
    assert not (tasks.output_dir("outside") / "final-model").exists()
    assert jsonl_log(tasks.output_dir("outside")).statuses == ["success", "success"]


def test_named_outside_flyte_it_warns_and_training_goes_on(trackmux_env, caplog):
    caplog.set_level(logging.WARNING)
    trainer = run_training(
        trackmux_env / "out",
        report_to=["jsonl", "flyte"],
        trainer_kwargs={"tracker_config": {"flyte": {"artifacts": "end"}}},
    )
    warnings = [r.getMessage() for r in caplog.records if INACTIVE in r.getMessage()]
    assert warnings == [f"{INACTIVE} ({NOT_LOADED}); training goes on without it"]
    assert dict(trainer.trackers.where())["flyte"] is None
    # inactive means no artifact policy either: no final model saved for nobody
    assert not (trackmux_env / "out" / "final-model").exists()
    assert jsonl_log(trackmux_env / "out").status == "success"
    assert "flytekit" not in sys.modules


def test_found_through_its_entry_point_and_skipped_by_all(trackmux_env, monkeypatch):
    from trackmux.plugins import get_registry
    from trackmux.report_to import resolve

    registry = get_registry(refresh=True)
    info = registry.get("flyte")
    assert info.available, info.reason
    assert info.distribution == "trackmux-flyte"
    assert info.tracker_class is FlyteTracker
    assert info.mode() == "local"
    assert dict(resolve("all", registry).skipped)["flyte"] == f"not configured: {NOT_LOADED}"
    monkeypatch.setenv(EXECUTION_ID_ENV, "f7a3b2c1")  # as in a cluster's task pod
    assert info.mode() == "online"


def test_a_bad_artifact_policy_fails_before_training_even_outside_a_task(trackmux_env):
    with pytest.raises(ValueError, match="flyte: artifacts .*'sometimes' is not a policy"):
        run_training(
            trackmux_env / "out",
            FlyteTracker(artifacts="sometimes"),
        )


# -- the conformance suite -------------------------------------------------------------------


class TestFlyteConformance(TrackerConformance):
    """The suite's runs train in plain code, outside any Flyte task, where this tracker is
    inactive by design, and a deck can be read only after its task ended. So only the checks
    that need no run are kept; the tests above make the others inside real tasks (every metric
    at every step against the jsonl log, the params, the status)."""

    tracker_class = FlyteTracker

    def make_tracker(self, tmp_path):
        return FlyteTracker()

    def read_back(self, tracker, tmp_path):
        raise AssertionError("a Flyte deck is read back only inside a task (tests above)")

    test_params_and_config_arrive = None
    test_every_metric_at_every_step = None
    test_status_success = None
    test_status_when_training_ends_early = None
    test_resume_continues_the_same_run = None
    test_a_plain_loop_run_arrives = None
    test_params_added_after_start_arrive = None
    test_no_metric_overwrites_another = None
    test_secrets_never_reach_the_backend = None  # the deck gets the config the core redacted


# -- import and availability -----------------------------------------------------------------


def test_import_discovery_and_all_load_neither_flytekit_nor_torch():
    report = discovery_report("flyte", "trackmux_flyte", ("torch", "flytekit", "flyteidl"))
    assert {key: report[key] for key in ("available", "skipped", "heavy")} == {
        "available": True,
        "skipped": f"not configured: {NOT_LOADED}",
        "heavy": [],
    }


@pytest.mark.parametrize(
    "case, reason",
    [
        ("missing", "backend missing: flytekit is not installed"),
        ("too-old", "unsupported backend: flytekit 1.15.3 is installed, flytekit>=1.16"),
    ],
    ids=["missing", "too-old"],
)
def test_reports_itself_unavailable_without_a_usable_flytekit(case, reason):
    version = None if case == "missing" else "1.15.3"
    fix = 'pip install "flytekit>=1.16"'
    assert_unavailable("flyte", "flytekit", "flytekit", version=version, reason=reason, fix=fix)
