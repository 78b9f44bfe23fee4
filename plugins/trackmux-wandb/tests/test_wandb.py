"""trackmux-wandb against the real wandb library, offline: every run is read back from the
``.wandb`` files wandb-core writes, parsed with wandb's own protobuf ``Record``."""

from __future__ import annotations

import glob
import json
import logging
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from wandb.proto import wandb_internal_pb2

from trackmux.testing import (
    RunData,
    TrackerConformance,
    describe_child,
    jsonl_log,
    run_child,
    run_training,
)
from trackmux.tracker import RunInfo
from trackmux_wandb.tracker import STEP_METRIC, WandbTracker

PLUGIN_ENV = (
    "WANDB_NAME",
    "WANDB_RUN_GROUP",
    "WANDB_TAGS",
    "WANDB_DIR",
    "WANDB_RUN_ID",
    "WANDB_RESUME",
    "WANDB_BASE_URL",
    "WANDB_DISABLED",
    "WANDB_LOG_FREQ",
)
STATUS = {0: "success", 1: "failed", 130: "killed"}


@pytest.fixture(autouse=True)
def _wandb_env(monkeypatch, tmp_path):
    """No developer setting leaks in, and wandb keeps its caches, artifact staging and
    credentials lookup inside the test's directory."""
    for name in PLUGIN_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb-home"
    for name, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(name, str(home / sub))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("NETRC", str(home / "netrc"))


# -- the reader: 7-byte header, then LevelDB-log records, each a protobuf Record ------------

BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path):
    data = Path(path).read_bytes()
    magic, version_tag, _ = struct.unpack("<4sHB", data[:7])
    assert (magic, version_tag) == (b":W&B", 0xBEE1), f"{path} is not a .wandb file"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == FULL:
            yield _record(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield _record(pending + chunk)
            pending = b""


def _record(raw: bytes):
    record = wandb_internal_pb2.Record()
    record.ParseFromString(raw)
    return record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbRun:
    """One run as its offline file(s) hold it (a resumed run has one file per piece)."""

    run_id: str
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    tags: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_codes: list = field(default_factory=list)
    artifacts: list = field(default_factory=list)
    files: list = field(default_factory=list)

    def metrics(self) -> dict[str, list[tuple[int, float]]]:
        """{name: [(train/global_step, value)]}, from history rows and then the summary."""
        series: dict[str, list] = {}
        for row in self.history:
            for name, value in row.items():
                if not name.startswith("_") and name != STEP_METRIC:
                    series.setdefault(name, []).append((row[STEP_METRIC], value))
        last = self.history[-1][STEP_METRIC] if self.history else 0
        for name, value in self.summary.items():
            if name not in series and not name.startswith("_") and name != STEP_METRIC:
                series[name] = [(last, value)]
        return series

    def as_run_data(self, runs: int) -> RunData:
        status = STATUS[self.exit_codes[-1]] if self.exit_codes else None
        return RunData(params=self.config, metrics=self.metrics(), status=status, runs=runs)


def complete_records(path, timeout: float = 120.0) -> list:
    """The records of a finished piece. ``run.finish()`` returns a few milliseconds before
    wandb-core has written the file out (it is complete at the latest when the process
    exits): wait for its exit record."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))
        if any(record.HasField("exit") for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.01)


def read_runs(root) -> dict[str, WandbRun]:
    pieces = []
    # the latest-run symlink would list a piece twice
    found_paths = glob.glob(os.path.join(root, "**", "run-*.wandb"), recursive=True)
    for path in sorted({os.path.realpath(path) for path in found_paths}):
        found = complete_records(path)
        start = next(r.run.start_time.ToNanoseconds() for r in found if r.HasField("run"))
        pieces.append((start, path, found))
    runs: dict[str, WandbRun] = {}
    for _, path, found in sorted(pieces):
        for record in found:
            kind = record.WhichOneof("record_type")
            if kind == "run":
                info = record.run
                run = runs.setdefault(info.run_id, WandbRun(info.run_id))
                run.files.append(path)
                run.project, run.entity, run.name = info.project, info.entity, info.display_name
                run.group, run.tags = info.run_group, list(info.tags)
                run.config.update({_key(i): json.loads(i.value_json) for i in info.config.update})
            elif kind == "config":
                run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "summary":
                run.summary.update(
                    {_key(i): json.loads(i.value_json) for i in record.summary.update}
                )
            elif kind == "exit":
                run.exit_codes.append(record.exit.exit_code)
            elif kind == "artifact":
                run.artifacts.append(record.artifact)
    for run in runs.values():
        run.config.pop("_wandb", None)
    return runs


def only_run(root) -> WandbRun:
    runs = read_runs(root)
    assert len(runs) == 1, f"expected one wandb run under {root}, found {sorted(runs)}"
    return next(iter(runs.values()))


def train(output_dir, *, tracker_config=None, callbacks=(), resume=None, **overrides):
    """A toy training that finds the tracker through ``report_to``, as users do."""
    return run_training(
        output_dir,
        callbacks=callbacks,
        resume=resume,
        trainer_kwargs={"tracker_config": tracker_config},
        **{"report_to": ["jsonl", "wandb"], **overrides},
    )


# -- the conformance suite ---------------------------------------------------------------


class TestWandbConformance(TrackerConformance):
    tracker_class = WandbTracker

    def make_tracker(self, tmp_path):
        return WandbTracker()

    def read_back(self, tracker, tmp_path):
        runs = read_runs(tmp_path)
        return runs[tracker.run.id].as_run_data(len(runs))


# -- where the run goes ------------------------------------------------------------------


def test_offline_without_credentials_says_so_once_with_the_sync_command(trackmux_env, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    notices = logging.getLogger("trackmux.wandb")
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    notices.addHandler(handler)
    try:
        assert WandbTracker.mode() == "offline"
        trainer = train(trackmux_env / "out")
    finally:
        notices.removeHandler(handler)

    run = only_run(trackmux_env / "out" / "wandb")
    command = f"wandb sync {trackmux_env / 'out' / 'wandb'}/offline-run-*-{run.run_id}"
    assert lines == [
        "wandb: no W&B credentials (WANDB_API_KEY or `wandb login`), logging offline; "
        f"upload later with: {command}"
    ]
    assert dict(trainer.trackers.where())["wandb"] == command
    assert trainer.state.tracker_runs["wandb"] == {
        "run_id": run.run_id,
        "project": "trackmux",
        "entity": "",
    }


@pytest.mark.parametrize(
    "env, mode",
    [
        ({}, "offline"),
        ({"WANDB_API_KEY": "k" * 40}, "online"),
        ({"NETRC": "entry"}, "online"),
        ({"WANDB_API_KEY": "k" * 40, "WANDB_MODE": "offline"}, "offline"),
        ({"WANDB_MODE": "dryrun"}, "offline"),
        ({"WANDB_MODE": "online"}, "online"),
    ],
)
def test_mode_follows_credentials_and_wandb_mode(monkeypatch, tmp_path, env, mode):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name, value in env.items():
        if name == "NETRC":
            netrc_file = tmp_path / "netrc"
            netrc_file.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40)
            netrc_file.chmod(0o600)
            value = str(netrc_file)
        monkeypatch.setenv(name, value)
    assert WandbTracker.mode() == mode


def test_online_without_credentials_is_refused_not_prompted(trackmux_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    tracker = WandbTracker()
    with pytest.raises(ValueError, match="WANDB_MODE=online but no credentials"):
        tracker.start(RunInfo(name="x", config={}, output_dir=str(trackmux_env / "out")))
    assert tracker.run is None
    assert not (trackmux_env / "out" / "wandb").exists()


def test_unknown_wandb_mode_is_refused_at_start(trackmux_env, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline-ish")
    assert WandbTracker.mode() == "offline"  # `trackmux plugins` still lists it
    with pytest.raises(ValueError, match="mode 'offline-ish' is not one of online, offline"):
        WandbTracker().start(RunInfo(name="x", config={}, output_dir=str(trackmux_env)))


def test_disabled_mode_stays_out_of_all_and_writes_nothing(trackmux_env, monkeypatch):
    from trackmux.plugins import PluginRegistry
    from trackmux.report_to import resolve

    registry = PluginRegistry()
    registry.add_tracker(WandbTracker)
    assert [info.name for info in resolve("all", registry).chosen] == ["wandb"]
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert "WANDB_MODE=disabled" in dict(resolve("all", registry).skipped)["wandb"]
    trainer = train(trackmux_env / "out")  # named explicitly, it runs, disabled
    assert dict(trainer.trackers.where())["wandb"] is None
    assert [step for step, _ in jsonl_log(trackmux_env / "out").history("train/loss")] == [
        2,
        4,
        6,
        8,
    ]
    assert read_runs(trackmux_env) == {}


def test_no_network_and_no_sync_offline(trackmux_env, monkeypatch):
    """wandb-core is a separate process: this guards the test process's sockets, and checks
    that what should stay on disk did (an offline run directory, no sync marker)."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(sock, address):
        host = address[0] if isinstance(address, tuple) else address
        if sock.family in (socket.AF_INET, socket.AF_INET6) and host not in (
            "127.0.0.1",
            "::1",
            "localhost",
        ):
            attempts.append(address)
            raise OSError(f"test: no network ({address})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    train(trackmux_env / "out")
    assert attempts == []
    run = only_run(trackmux_env)
    (piece,) = run.files
    assert os.path.basename(os.path.dirname(piece)).startswith("offline-run-")
    assert not glob.glob(str(trackmux_env / "**" / "*.synced"), recursive=True)
    assert not glob.glob(str(trackmux_env / "out" / "wandb" / "run-*"))


# -- names, config, metrics ---------------------------------------------------------------


def test_project_entity_name_group_tags_from_env(trackmux_env, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "vision")
    monkeypatch.setenv("WANDB_ENTITY", "team-a")
    monkeypatch.setenv("WANDB_NAME", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "sweep-1")
    monkeypatch.setenv("WANDB_TAGS", "baseline, toy ,")
    trainer = train(trackmux_env / "out")
    run = only_run(trackmux_env)
    assert (run.project, run.entity, run.name, run.group) == (
        "vision",
        "team-a",
        "from-env",
        "sweep-1",
    )
    assert run.tags == ["baseline", "toy"]
    assert trainer.state.tracker_runs["wandb"]["project"] == "vision"


def test_settings_in_code_beat_env_and_defaults(trackmux_env, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_TAGS", "env-tag")
    code = {"project": "from-code", "tags": ["a", "b"], "dir": str(trackmux_env / "elsewhere")}
    train(trackmux_env / "out", tracker_config={"wandb": code})
    assert read_runs(trackmux_env / "out") == {}
    run = only_run(trackmux_env / "elsewhere")
    assert (run.project, run.tags, run.name, run.group) == (
        "from-code",
        ["a", "b"],
        "conformance",
        "",
    )


def test_config_is_the_flat_run_config_with_dotted_model_keys(trackmux_env):
    train(trackmux_env / "out")
    run = only_run(trackmux_env)
    log = jsonl_log(trackmux_env / "out")
    assert run.config["learning_rate"] == 0.01
    assert run.config["model.hidden"] == 16
    assert run.config["model_class"] == "TinyRegressor"
    assert run.config["dataset"] == "toy-regression"
    assert len(run.config) == len(log.config)


def test_every_row_carries_the_trainer_step_and_summary_is_not_history(trackmux_env):
    train(trackmux_env / "out")
    run = only_run(trackmux_env)
    log = jsonl_log(trackmux_env / "out")
    assert all(STEP_METRIC in row for row in run.history)
    # a train row and an eval row at step 4 and 8: wandb's own _step keeps counting rows
    assert [row[STEP_METRIC] for row in run.history] == [2, 4, 4, 6, 8, 8]
    assert [row["_step"] for row in run.history] == [0, 1, 2, 3, 4, 5]
    metrics = run.metrics()
    for name, history in log.metrics.items():
        assert metrics[name] == history, name
    assert log.summary and "train/train_runtime" in log.summary
    for name, value in log.summary.items():
        assert run.summary[name] == value, name
    assert not any("train/train_runtime" in row for row in run.history)


def test_evaluate_after_train_lands_in_the_same_run(trackmux_env):
    trainer = train(trackmux_env / "out")
    trainer.evaluate()
    run = only_run(trackmux_env)
    assert len(run.files) == 2  # the reopened run writes a second piece offline
    assert [step for step, _ in run.metrics()["eval/loss"]] == [4, 8, 8]
    assert run.exit_codes == [0, 0]


@pytest.mark.parametrize("delivery", ["thread", "process"])
def test_resume_reopens_the_run_the_checkpoint_names(trackmux_env, monkeypatch, delivery):
    from trackmux.testing import StopAt

    with pytest.raises(KeyboardInterrupt):
        train(
            trackmux_env / "out",
            callbacks=[StopAt(7, KeyboardInterrupt())],
            tracker_delivery=delivery,
        )
    # configured elsewhere now, the resumed training still continues the checkpoint's run
    monkeypatch.setenv("WANDB_PROJECT", "another")
    train(trackmux_env / "out", resume=True, tracker_delivery=delivery)
    run = only_run(trackmux_env)
    assert run.project == "trackmux"
    assert run.exit_codes == [130, 0]
    # resumed from checkpoint-4, the training logs step 6 again. Delivered live, the first
    # step 6 is in the run; the delivery process drops it when the resumed session's start
    # is in the journal before it sent it (the rule of `trackmux sync`)
    steps = [step for step, _ in run.metrics()["train/loss"]]
    if delivery == "thread":
        assert steps == [2, 4, 6, 6, 8]
    else:
        assert steps in ([2, 4, 6, 6, 8], [2, 4, 6, 8])


def test_users_own_run_is_used_and_left_open(trackmux_env):
    import wandb

    mine = wandb.init(mode="offline", dir=str(trackmux_env / "mine"), project="own")
    try:
        trainer = train(trackmux_env / "out")
        assert trainer.state.tracker_runs["wandb"]["run_id"] == mine.id
        assert wandb.run is mine  # still open: its owner ends it
        mine.log({"after": 1})
    finally:
        mine.finish()
    run = only_run(trackmux_env)
    assert run.run_id == mine.id and run.exit_codes == [0]
    assert [step for step, _ in run.metrics()["train/loss"]] == [2, 4, 6, 8]
    assert run.config["learning_rate"] == 0.01


# -- watch and artifacts ------------------------------------------------------------------


def test_wandb_watch_logs_gradient_and_parameter_histograms(trackmux_env, monkeypatch):
    monkeypatch.setenv("WANDB_WATCH", "all")
    monkeypatch.setenv("WANDB_LOG_FREQ", "2")
    train(trackmux_env / "out")
    run = only_run(trackmux_env)
    # a histogram is a nested value: {"_type": "histogram", "bins": [...], "values": [...]}
    kinds = {
        key[: -len("/_type")]: value
        for row in run.history
        for key, value in row.items()
        if key.endswith("/_type")
    }
    assert set(kinds.values()) == {"histogram"}
    layers = {"net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias"}
    assert {key for key in kinds if key.startswith("gradients/")} == {
        f"gradients/{layer}" for layer in layers
    }
    assert {key for key in kinds if key.startswith("parameters/")} == {
        f"parameters/{layer}" for layer in layers
    }
    assert all(STEP_METRIC in row for row in run.history)


def test_wandb_watch_rejects_an_unknown_value(trackmux_env, monkeypatch):
    from trackmux.delivery import TrackerError

    monkeypatch.setenv("WANDB_WATCH", "weights")
    with pytest.raises(TrackerError, match="WANDB_WATCH='weights'"):
        train(trackmux_env / "out")


@pytest.mark.parametrize(
    "policy, aliases",
    [
        ("checkpoint", [["checkpoint_global_step_4"], ["checkpoint_global_step_8"]]),
        ("end", [["final_model"]]),
    ],
)
def test_wandb_log_model_saves_model_artifacts_offline(trackmux_env, monkeypatch, policy, aliases):
    monkeypatch.setenv("WANDB_LOG_MODEL", policy)
    train(trackmux_env / "out")
    run = only_run(trackmux_env)
    assert [a.name for a in run.artifacts] == [f"model-{run.run_id}"] * len(aliases)
    assert all(a.type == "model" for a in run.artifacts)
    assert [[x for x in a.aliases if x != "latest"] for a in run.artifacts] == aliases
    for artifact in run.artifacts:
        paths = {entry.path for entry in artifact.manifest.contents}
        assert "model.safetensors" in paths
        # staged locally, for wandb sync to upload
        assert all(os.path.isfile(entry.local_path) for entry in artifact.manifest.contents)


# -- import and availability ---------------------------------------------------------------


def test_import_and_discovery_do_not_import_wandb():
    code = (
        "import sys, trackmux_wandb\n"
        "from trackmux.plugins import get_registry\n"
        "info = get_registry().get('wandb')\n"
        "assert info.available and info.distribution == 'trackmux-wandb', info\n"
        "print(info.mode(), sorted(m for m in sys.modules if m.split('.')[0] == 'wandb'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_MODE", "WANDB_API_KEY")}
    result = run_child([sys.executable, "-c", code], timeout=60, env=env)
    assert result.stdout.strip() == "offline []", describe_child(result)


def test_unavailable_backend_names_its_pip_line(monkeypatch):
    import importlib.metadata

    from trackmux.plugins import PluginRegistry

    real_version = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda name: "0.30.1" if name == "wandb" else real_version(name),
    )
    registry = PluginRegistry()
    registry.add_tracker(WandbTracker)
    info = registry.get("wandb")
    assert info.status == "unavailable"
    assert "wandb 0.30.1 is installed" in info.reason
    assert info.fix == 'pip install "wandb>=0.31"'
