"""The dvclive plugin against the real dvclive (and DVC): everything is read back from the
files dvclive writes, with dvclive's own readers."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from trackmux.testing import (
    RunData,
    StopAt,
    TrackerConformance,
    describe_child,
    jsonl_log,
    replace_tracker_identity,
    run_child,
    run_training,
)
from trackmux.tracker import RunInfo
from trackmux_dvclive.tracker import DVCLiveTracker

EXPECTED_DVC_YAML = {
    "params": ["dvclive/params.yaml"],
    "metrics": ["dvclive/metrics.json"],
    "plots": [{"dvclive/plots/metrics": {"x": "step"}}],
}


def read_live(directory):
    """(params, metrics {name: [(step, value)]}, summary) of one dvclive directory."""
    from dvclive.serialize import load_yaml
    from dvclive.utils import parse_json, parse_tsv

    directory = Path(directory)
    root = directory / "plots" / "metrics"
    metrics = {}
    for path in sorted(root.rglob("*.tsv")):
        name = path.relative_to(root).with_suffix("").as_posix()
        metrics[name] = [(int(row["step"]), float(row[path.stem])) for row in parse_tsv(path)]
    return load_yaml(directory / "params.yaml"), metrics, parse_json(directory / "metrics.json")


def summary_points(summary, prefix=""):
    """metrics.json's numbers as {name: value}, names joined with "/" like the tsv paths."""
    points = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            points.update(summary_points(value, f"{name}/"))
        elif isinstance(value, int | float) and key != "step":
            points[name] = value
    return points


def dvc_yaml(path):
    from dvclive.serialize import load_yaml

    return load_yaml(path)


def init_dvc_repo(path):
    from dvc.repo import Repo

    Repo.init(str(path), no_scm=True).close()


class TestDVCLiveConformance(TrackerConformance):
    tracker_class = DVCLiveTracker
    purges_after_resume = True

    def make_tracker(self, tmp_path):
        # the defaults: <output_dir>/dvclive, dvc.yaml beside it
        return DVCLiveTracker()

    def read_back(self, tracker, tmp_path):
        params, metrics, summary = read_live(tracker.directory)
        # end-of-training values are in metrics.json only, at its final step
        for name, value in summary_points(summary).items():
            metrics.setdefault(name, [(summary["step"], value)])
        runs = len(list(Path(tmp_path).rglob("metrics.json")))
        return RunData(params=params, metrics=metrics, status=summary.get("status"), runs=runs)


def test_steps_are_the_global_step_for_train_and_eval(trackmux_env):
    tracker = DVCLiveTracker()
    run_training(trackmux_env / "out", tracker)
    _, metrics, summary = read_live(trackmux_env / "out" / "dvclive")
    log = jsonl_log(trackmux_env / "out")
    assert [s for s, _ in metrics["train/loss"]] == [2, 4, 6, 8]
    # the train log and the eval log of step 4 are both at 4: no per-call counter
    assert [s for s, _ in metrics["eval/loss"]] == [4, 8]
    for name, history in metrics.items():
        assert history == log.history(name), name
    # end-of-training values are one number each: in metrics.json, not plotted
    assert summary["train"]["train_runtime"] == log.summary["train/train_runtime"]
    assert "train/train_runtime" not in metrics
    assert summary["step"] == 8
    assert summary["status"] == "success"
    assert summary["eval"]["loss"] == log.last("eval/loss")


def test_direct_calls_keep_the_given_steps(trackmux_env):
    tracker = DVCLiveTracker(dir=str(trackmux_env / "live"))
    tracker.start(RunInfo(name="direct", config={"lr": 0.5, "model/hidden": 16}, output_dir="."))
    _, _, summary = read_live(trackmux_env / "live")
    assert summary == {"status": "running"}
    tracker.log_metrics({"train/loss": 1.0}, 4)
    tracker.log_metrics({"eval/loss": 2.0}, 4)
    tracker.log_metrics({"train/loss": 0.25, "../escape": 3.0}, 10)
    tracker.finish("success")
    params, metrics, summary = read_live(trackmux_env / "live")
    assert params == {"lr": 0.5, "model/hidden": 16}
    assert metrics == {
        "train/loss": [(4, 1.0), (10, 0.25)],
        "eval/loss": [(4, 2.0)],
        "escape": [(10, 3.0)],
    }
    assert summary == {
        "train": {"loss": 0.25},
        "eval": {"loss": 2.0},
        "escape": 3.0,
        "step": 10,
        "status": "success",
    }


def test_nothing_written_to_the_working_directory(trackmux_env):
    run_training(trackmux_env / "out", DVCLiveTracker())
    assert sorted(p.name for p in trackmux_env.iterdir()) == ["out"]
    out = trackmux_env / "out"
    assert (out / "dvc.yaml").is_file()
    assert dvc_yaml(out / "dvc.yaml") == EXPECTED_DVC_YAML


def test_dvc_reads_the_run_back(trackmux_env):
    tracker = DVCLiveTracker()
    run_training(trackmux_env / "out", tracker)
    assert "dvc plots show" in tracker.where()
    assert tracker.where().startswith(str(trackmux_env / "out" / "dvclive"))
    shown = run_child(
        [sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=trackmux_env / "out"
    )
    data = json.loads(shown.stdout)[""]["data"]["dvclive/metrics.json"]["data"]
    log = jsonl_log(trackmux_env / "out")
    assert data["train"]["loss"] == log.last("train/loss")
    assert data["status"] == "success"


def test_no_dvc_yaml_when_disabled(trackmux_env):
    tracker = DVCLiveTracker(dvcyaml=False)
    run_training(trackmux_env / "out", tracker)
    assert list(trackmux_env.rglob("dvc.yaml")) == []
    assert "-x step" in tracker.where()
    _, metrics, _ = read_live(trackmux_env / "out" / "dvclive")
    assert [s for s, _ in metrics["train/loss"]] == [2, 4, 6, 8]


def test_resume_drops_the_points_logged_after_the_checkpoint(trackmux_env):
    out = trackmux_env / "out"
    # killed before step 7: steps 5 and 6 (train/loss at 6) came after checkpoint-4
    with pytest.raises(KeyboardInterrupt):
        run_training(out, DVCLiveTracker(), callbacks=[StopAt(7, KeyboardInterrupt())])
    _, metrics, summary = read_live(out / "dvclive")
    assert [s for s, _ in metrics["train/loss"]] == [2, 4, 6]
    assert summary["status"] == "killed"

    run_training(out, DVCLiveTracker(), resume=True)
    _, metrics, summary = read_live(out / "dvclive")
    log = jsonl_log(out)
    # without the purge step 6 would be there twice, the interrupted run's and the new one
    assert [s for s, _ in metrics["train/loss"]] == [2, 4, 6, 8]
    assert [s for s, _ in metrics["eval/loss"]] == [4, 8]
    for name, history in metrics.items():
        assert history == log.history(name), name
    assert summary["status"] == "success"
    assert summary["step"] == 8
    # reopening updated dvc.yaml in place instead of adding its entries a second time
    assert dvc_yaml(out / "dvc.yaml") == EXPECTED_DVC_YAML


@pytest.mark.parametrize(
    "value, policy",
    [
        ("all", "checkpoint"),
        ("ALL", "checkpoint"),
        ("true", "end"),
        ("1", "end"),
        ("false", "none"),
        ("last", "last"),
        ("best", "best"),
    ],
)
def test_hf_dvclive_log_model_maps_to_a_policy(monkeypatch, value, policy):
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", value)
    assert DVCLiveTracker().artifact_policy() == policy


def test_artifacts_setting_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "all")
    assert DVCLiveTracker(artifacts="none").artifact_policy() == "none"
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "sometimes")
    with pytest.raises(ValueError, match="HF_DVCLIVE_LOG_MODEL"):
        DVCLiveTracker().artifact_policy()


def test_log_model_true_stores_the_final_model(trackmux_env, monkeypatch):
    init_dvc_repo(trackmux_env)
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "true")
    run_training(trackmux_env / "out", DVCLiveTracker())
    out = trackmux_env / "out"
    artifacts = dvc_yaml(out / "dvc.yaml")["artifacts"]
    assert artifacts == {
        "final-model": {
            "path": "final-model",
            "type": "model",
            "meta": {"kind": "model", "step": 8},
        }
    }
    pointer = dvc_yaml(out / "final-model.dvc")
    assert [o["path"] for o in pointer["outs"]] == ["final-model"]
    assert list(out.glob("checkpoint-*.dvc")) == []


def test_log_model_all_stores_every_checkpoint(trackmux_env, monkeypatch):
    init_dvc_repo(trackmux_env)
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "all")
    run_training(trackmux_env / "out", DVCLiveTracker())
    out = trackmux_env / "out"
    artifacts = dvc_yaml(out / "dvc.yaml")["artifacts"]
    assert artifacts == {
        f"checkpoint-{step}": {
            "path": f"checkpoint-{step}",
            "type": "model",
            "meta": {"kind": "checkpoint", "step": step},
        }
        for step in (4, 8)
    }
    assert sorted(p.name for p in out.glob("*.dvc")) == ["checkpoint-4.dvc", "checkpoint-8.dvc"]


def test_without_a_dvc_repo_artifacts_are_skipped_with_one_warning(
    trackmux_env, monkeypatch, caplog
):
    monkeypatch.setenv("HF_DVCLIVE_LOG_MODEL", "all")
    with caplog.at_level(logging.WARNING):
        run_training(trackmux_env / "out", DVCLiveTracker())
    ours = [r for r in caplog.records if "needs a DVC repository" in r.getMessage()]
    assert len(ours) == 1
    assert not [r for r in caplog.records if "A DVC repo is required" in r.getMessage()]
    assert list(trackmux_env.rglob("*.dvc")) == []
    _, _, summary = read_live(trackmux_env / "out" / "dvclive")
    assert summary["status"] == "success"


def test_mode_follows_the_studio_token(monkeypatch):
    for name in ("DVC_STUDIO_TOKEN", "STUDIO_TOKEN", "DVC_STUDIO_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    assert DVCLiveTracker.mode() == "local"
    monkeypatch.setenv("DVC_STUDIO_TOKEN", "isat_x")
    assert DVCLiveTracker.mode() == "online"
    monkeypatch.setenv("DVC_STUDIO_OFFLINE", "true")
    assert DVCLiveTracker.mode() == "local"


def test_discovery_does_not_import_dvclive():
    code = (
        "import sys\n"
        "from trackmux.plugins import get_registry\n"
        "info = get_registry().get('dvclive')\n"
        "assert info.available, info.reason\n"
        "assert info.distribution == 'trackmux-dvclive', info.distribution\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in {'dvclive', 'dvc'})\n"
        "assert not loaded, loaded\n"
        "print(info.backend_version)\n"
    )
    done = run_child([sys.executable, "-c", code], timeout=120, check=False)
    assert done.returncode == 0, describe_child(done)
    from importlib.metadata import version

    assert done.stdout.strip() == version("dvclive"), describe_child(done)


def test_all_skips_dvclive_where_it_would_run_dvc_init(tmp_path, monkeypatch):
    from trackmux.plugins import PluginRegistry
    from trackmux.report_to import resolve

    registry = PluginRegistry()
    registry.add_tracker(DVCLiveTracker)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")

    def chosen(report_to):
        return [info.name for info in resolve(report_to, registry).chosen]

    assert chosen("all") == ["dvclive"]
    (tmp_path / ".git").mkdir()
    selection = resolve("all", registry)
    assert [info.name for info in selection.chosen] == []
    reason = dict(selection.skipped)["dvclive"]
    assert str(tmp_path) in reason and "dvc init" in reason
    # named, it runs; in a DVC repository "all" takes it again
    assert chosen(["dvclive"]) == ["dvclive"]
    (tmp_path / ".dvc").mkdir()
    assert chosen("all") == ["dvclive"]


# -- a checkpoint is data, not instructions (issue 15, row 1) ---------------------------------


@pytest.mark.parametrize("where", ["../../elsewhere", "ABSOLUTE"])
def test_checkpoint_dir_outside_output_dir_is_refused(trackmux_env, caplog, where):
    out = trackmux_env / "a" / "b" / "out"
    elsewhere = trackmux_env / "a" / "elsewhere"
    where = str(elsewhere) if where == "ABSOLUTE" else where
    run_training(out, DVCLiveTracker())
    stored = replace_tracker_identity(out / "checkpoint-4", "dvclive", {"dir": where})
    assert stored == {"dir": "dvclive"}  # relative to output_dir

    resumed = DVCLiveTracker()
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        run_training(out, resumed, resume=str(out / "checkpoint-4"))
    assert not elsewhere.exists()
    assert resumed.directory == str(out / "dvclive")
    assert [p.parent for p in trackmux_env.rglob("metrics.json")] == [out / "dvclive"]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "'dvclive'" in refused[0] and "dir" in refused[0]
    _, metrics, summary = read_live(out / "dvclive")
    assert summary["status"] == "success" and summary["step"] == 8
    assert [s for s, _ in metrics["train/loss"]] == [6, 8]  # a new run, from the checkpoint
