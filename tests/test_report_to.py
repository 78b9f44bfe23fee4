"""report_to resolution: all / none / names, errors before training, the summary line."""

import logging

import pytest

from trackmux import Tracker, Trainer, TrainingArguments
from trackmux.plugins import UNAVAILABLE, PluginInfo, PluginRegistry
from trackmux.report_to import ReportToError, requested_names, resolve
from trackmux.testing.toy import RegressionDataset, TinyRegressor
from trackmux.trackers.jsonl import JsonlTracker


class Quiet(Tracker):
    name = "quiet"

    def start(self, run):
        return None

    def log_metrics(self, metrics, step, epoch=None):
        pass

    def finish(self, status):
        pass


class NeedsWorkspace(Quiet):
    name = "saas"

    @classmethod
    def unconfigured_reason(cls):
        return "SAAS_WORKSPACE is not set"


@pytest.fixture
def registry():
    registry = PluginRegistry()
    registry.add_tracker(JsonlTracker, builtin=True)
    registry.add_tracker(Quiet)
    registry.add_tracker(NeedsWorkspace)
    registry.plugins["missing"] = PluginInfo(
        "missing",
        "trackmux-missing",
        "1.0",
        UNAVAILABLE,
        Quiet,
        "backend missing: x",
        "pip install x",
    )
    return registry


@pytest.mark.parametrize("value", ["none", None, [], ["none"], ()])
def test_none_means_no_tracker(value):
    assert requested_names(value) == []


@pytest.mark.parametrize("value", ["all", ["all"], ["quiet", "all"]])
def test_all_means_every_available_tracker(value, registry):
    selection = resolve(value, registry)
    assert [info.name for info in selection.chosen] == ["jsonl", "quiet"]
    skipped = dict(selection.skipped)
    assert skipped["saas"] == "not configured: SAAS_WORKSPACE is not set"
    assert skipped["missing"] == "backend missing: x"
    assert "wandb" in next(name for name, why in selection.skipped if "not installed" in why)


def test_names_are_exact_deduplicated_and_ordered(registry):
    selection = resolve(["quiet", "jsonl", "quiet", "saas"], registry)
    assert [info.name for info in selection.chosen] == ["quiet", "jsonl", "saas"]
    assert resolve("quiet,jsonl", registry).chosen[0].name == "quiet"


def test_unknown_name_suggests_and_names_the_install(registry):
    with pytest.raises(ReportToError) as error:
        resolve(["quite"], registry)
    message = str(error.value)
    assert "Did you mean 'quiet'?" in message
    assert "Installed: jsonl, missing, quiet, saas" in message
    with pytest.raises(ReportToError) as error:
        resolve(["zzz_tracker"], registry)
    # no guessed distribution: only trackmux's own plugins get an install line
    assert "No trackmux plugin has that name" in str(error.value)
    assert "pip install" not in str(error.value)


def test_known_plugin_not_installed_says_how_to_install_it(registry):
    with pytest.raises(ReportToError) as error:
        resolve(["comet_ml"], registry)
    message = str(error.value)
    assert "a trackmux plugin that is not installed" in message
    assert "from a clone: pip install -e plugins/trackmux-comet-ml" in message
    assert "from a wheelhouse: pip install --find-links WHEELHOUSE trackmux-comet-ml" in message
    assert "once published: pip install trackmux-comet-ml" in message


def test_misspelt_known_plugin_gets_did_you_mean(registry):
    with pytest.raises(ReportToError, match="Did you mean 'tensorboard'"):
        resolve(["tensorbord"], registry)


def test_installed_but_unavailable_fails_with_reason(registry):
    with pytest.raises(
        ReportToError, match="installed but cannot run: backend missing: x; fix: pip install x"
    ):
        resolve(["missing"], registry)


def test_none_mixed_with_names_is_refused():
    with pytest.raises(ReportToError, match="mixes 'none'"):
        requested_names(["none", "wandb"])


def test_bad_type_is_refused():
    with pytest.raises(ReportToError, match="must be"):
        requested_names(3)


def _trainer(tmp_path, trackers=(), **overrides):
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, disable_tqdm=True, save_strategy="no", **overrides
    )
    return Trainer(
        TinyRegressor(), args, train_dataset=RegressionDataset(16), trackers=list(trackers)
    )


def test_unknown_name_fails_before_any_training(tmp_path):
    trainer = _trainer(tmp_path, report_to=["not_a_tracker"])
    with pytest.raises(ReportToError, match="not_a_tracker"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert not (tmp_path / "runs").exists()


def test_reassigning_report_to_after_construction_is_honoured(tmp_path):
    trainer = _trainer(tmp_path, trackers=[Quiet()])
    trainer.args.report_to = "none"
    trainer.args.run_journal = False
    trainer.train()
    assert [t.name for t in trainer.trackers.trackers] == ["quiet"]
    assert not (tmp_path / "runs").exists()


def test_report_to_none_still_keeps_the_run_journal_and_show_reads_it(tmp_path, capsys):
    from trackmux.cli import main

    trainer = _trainer(tmp_path, report_to="none", logging_steps=1)
    trainer.train()
    assert [t.name for t in trainer.trackers.trackers] == ["jsonl"]
    capsys.readouterr()
    assert main(["show", str(tmp_path)]) == 0
    assert "train/loss" in capsys.readouterr().out


@pytest.mark.parametrize("report_to", [["quiet"], "quiet", "none", "all"])
def test_the_journal_is_added_to_any_choice_and_comes_first(report_to, registry):
    chosen = [info.name for info in resolve(report_to, registry, journal=True).chosen]
    assert chosen[0] == "jsonl" and chosen.count("jsonl") == 1


@pytest.mark.parametrize("report_to", [["quiet"], "none", "all"])
def test_run_journal_false_leaves_the_journal_out(report_to, registry):
    chosen = [info.name for info in resolve(report_to, registry, journal=False).chosen]
    assert "jsonl" not in chosen


def test_run_journal_false_with_jsonl_named_is_refused(tmp_path):
    trainer = _trainer(tmp_path, report_to=["jsonl"], run_journal=False)
    with pytest.raises(ReportToError, match="run_journal"):
        trainer.train()
    assert not (tmp_path / "runs").exists()


def test_a_jsonl_tracker_passed_as_an_object_replaces_the_journal(tmp_path):
    trainer = _trainer(tmp_path, report_to="none", trackers=[JsonlTracker(dir=tmp_path / "logs")])
    trainer.train()
    assert [t.name for t in trainer.trackers.trackers] == ["jsonl"]
    assert any((tmp_path / "logs").iterdir()) and not (tmp_path / "runs").exists()


def test_run_journal_must_be_a_bool(tmp_path):
    with pytest.raises(TypeError, match="run_journal"):
        TrainingArguments(output_dir=str(tmp_path), run_journal="no")


def test_default_all_writes_the_jsonl_log(tmp_path):
    trainer = _trainer(tmp_path)
    trainer.train()
    assert [t.name for t in trainer.trackers.trackers][0] == "jsonl"
    assert any((tmp_path / "runs").iterdir())


def test_one_summary_line_when_training_starts(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="trackmux")
    _trainer(tmp_path, report_to="all").train()
    lines = [
        r.getMessage() for r in caplog.records if r.getMessage().startswith("trackmux: reporting")
    ]
    assert len(lines) == 1
    assert lines[0].startswith("trackmux: reporting to jsonl")
    assert "(not installed; `trackmux plugins` says how to install them)" in lines[0]
