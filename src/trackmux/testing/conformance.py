"""The conformance suite every tracker plugin reuses.

A plugin's tests subclass :class:`TrackerConformance`, say how to build its tracker and how
to read its backend's data back, and inherit tests that check, once for all plugins:

- params and config arrive;
- every metric arrives at every logged step with its value (compared with the jsonl log
  written in the same run);
- the run's status on success, failure and interrupt;
- resuming from a checkpoint continues the same backend run;
- nothing is created on non-main ranks;
- a missing backend is reported as unavailable, with the pip line that fixes it.

Example::

    class TestMyTracker(TrackerConformance):
        tracker_class = MyTracker

        def make_tracker(self, tmp_path):
            return MyTracker(dir=str(tmp_path / "backend"))

        def read_back(self, tracker, tmp_path):
            return RunData(params=..., metrics=..., status=..., runs=...)
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest

TRAINING_DEFAULTS: dict[str, Any] = {
    "max_steps": 8,
    "logging_steps": 2,
    "eval_strategy": "steps",
    "eval_steps": 4,
    "save_steps": 4,
    "per_device_train_batch_size": 8,
    "learning_rate": 0.01,
    "seed": 7,
    "disable_tqdm": True,
    "report_to": ["jsonl"],
    "tracker_strict": True,
    "run_name": "conformance",
    # a generous deadline, not a budget: on a loaded 2-core machine a backend's first start
    # (imports, MLflow creating its database) can take minutes, and a test must not abandon it
    "tracker_close_timeout": 600,
}
HYPERPARAMETERS = {"dataset": "toy-regression", "note": "conformance"}

#: what a secret looks like in :meth:`TrackerConformance.test_secrets_never_reach_the_backend`:
#: every secret below contains it, no other value does
SECRET_MARK = "s3cr3t"
#: a config full of credentials: every key form and value pattern of trackmux.values
SECRET_CONFIG: dict[str, Any] = {
    "api_keys": {"openai": "s3cr3t-openai-0001"},
    "tokens": {"service": "s3cr3t-tokens-0002"},
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIs3cr3tPRIVATE0003\n-----END PRIVATE KEY-----",
    "access_key": "s3cr3t-access-0004",
    "secret_key": "s3cr3t-secret-0005",
    "passphrase": "s3cr3t passphrase 0006",
    "pwd": "s3cr3t-pwd-0007",
    "key": "s3cr3t-key-0008",
    "credentials": "s3cr3t-credentials-0009",
    "authorization": "s3cr3t-authorization-0010",
    "cookie": "session=s3cr3t-cookie-0011",
    "clientSecret": "s3cr3t-camel-0012",
    "auth": "Bearer s3cr3tBEARER0013",
    "database": "host=db.example user=trainer password=s3cr3t-pg-0014 dbname=runs",
    "presigned_url": (
        "https://bucket.s3.amazonaws.com/model.pt?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=s3cr3tCRED0015%2F20250101&X-Amz-Signature=s3cr3tSIG0015"
        "&X-Amz-Expires=3600"
    ),
    "sas_url": "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sig=s3cr3tSAS0016&se=2030",
    "endpoint": "https://api.example/v1?token=s3cr3t-query-0017&page=2",
    "notify": {
        "slack": "https://hooks.slack.com/services/T0000/B0000/s3cr3tSLACK0018",
        "discord": "https://discord.com/api/webhooks/1234/s3cr3tDISCORD0019",
    },
    "tracking_uri": "http://alice:s3cr3t-password-0020@127.0.0.1:5000",
    "artifact_location": "s3://s3cr3tUSERINFO0021@bucket/artifacts",
    "notes": (
        "github ghp_s3cr3t0022abcdefghijklmnop, github_pat_s3cr3t0023_abcdefghijklmnop, "
        "gitlab glpat-s3cr3t0024abcdefghij, slack xoxb-1234-s3cr3t0025, "
        "openai sk-proj-s3cr3t0026abcdefghij, hf hf_s3cr3t0027abcdefghijklmn, "
        "aws AKIAS3CR3T0028ABCDEF"
    ),
    # not secrets: these arrive unchanged
    "learning_rate": 0.5,
    "model_name": "tiny-regressor",
    "max_tokens": 512,
    "pad_token": "<pad>",
    "tokenizer": "bpe",
}


@dataclass
class RunData:
    """What a backend holds about the runs of a test, in trackmux's terms.

    ``metrics`` maps the names trackmux sent (after the tracker's ``sanitize_name``) to
    ``[(step, value), ...]``; ``status`` is "success", "failed", "killed" or None when the
    backend has no notion of it; ``runs`` counts the distinct backend runs found.
    """

    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str | None = None
    runs: int = 1


def StopAt(step: int, error: BaseException):
    """A callback raising ``error`` at the start of step ``step`` (after step - 1 finished):
    how the suite simulates a crash (an exception) or an interrupt (KeyboardInterrupt)."""
    from trackmux import TrainerCallback

    class StopAtStep(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step:
                raise error

    return StopAtStep()


def run_training(
    output_dir, tracker=None, *, callbacks=(), resume=None, trainer_kwargs=None, **overrides
):
    """Train the toy model for a few steps, reporting to jsonl and ``tracker``.

    ``overrides`` change TrainingArguments; ``trainer_kwargs`` are passed to the Trainer
    (``tracker_config``, ``compute_metrics``...)."""
    from trackmux import Trainer, TrainingArguments
    from trackmux.testing.toy import RegressionDataset, TinyRegressor

    arguments = {**TRAINING_DEFAULTS, "output_dir": str(output_dir), **overrides}
    trainer = Trainer(
        model=TinyRegressor(),
        args=TrainingArguments(**arguments),
        train_dataset=RegressionDataset(32),
        eval_dataset=RegressionDataset(16, seed=1),
        callbacks=list(callbacks),
        trackers=[tracker] if tracker is not None else None,
        hyperparameters=HYPERPARAMETERS,
        **(trainer_kwargs or {}),
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def replace_tracker_identity(checkpoint, name: str, identity) -> dict | None:
    """Edit ``checkpoint``'s trackmux_state.json (where the trackers' run identities are
    kept) as someone else could: the run identity of tracker ``name`` becomes
    ``identity``. Returns the identity it replaced (as stored)."""
    import json

    state_file = Path(checkpoint) / "trackmux_state.json"
    state = json.loads(state_file.read_text(encoding="utf-8"))
    replaced = state["tracker_runs"].get(name)
    state["tracker_runs"][name] = identity
    state_file.write_text(json.dumps(state), encoding="utf-8")
    return replaced


def jsonl_log(output_dir):
    from trackmux.runlog import find_runs, read_run

    runs = find_runs(output_dir)
    assert runs, f"no jsonl run log under {output_dir}"
    return read_run(runs[-1])


class TrackerConformance:
    """Subclass this in a plugin's tests; implement :meth:`make_tracker` and
    :meth:`read_back`, set :attr:`tracker_class`."""

    tracker_class: ClassVar[type]
    #: relative tolerance for values read back (float32 backends need about 1e-6)
    rel_tolerance: ClassVar[float] = 0.0
    #: params come back as strings (MLflow, ClearML)
    params_as_strings: ClassVar[bool] = False
    #: metric names the backend does not keep (e.g. runtimes it drops)
    ignored_metrics: ClassVar[tuple[str, ...]] = ()
    #: on resume, the backend drops points logged after the checkpoint (RunInfo.step)
    purges_after_resume: ClassVar[bool] = False

    def make_tracker(self, tmp_path: Path):
        """A configured tracker writing under ``tmp_path``."""
        raise NotImplementedError

    def read_back(self, tracker, tmp_path: Path) -> RunData:
        """Read what the backend stored, with the backend's own reader."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------

    def train(self, tmp_path, tracker=None, **overrides):
        tracker = tracker if tracker is not None else self.make_tracker(tmp_path)
        trainer = run_training(tmp_path / "out", tracker, **overrides)
        return trainer, tracker

    def expected_name(self, tracker, name: str) -> str:
        return tracker.sanitize_name(name)

    def assert_same_value(self, got, expected, what: str) -> None:
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(got), what
        elif self.rel_tolerance:
            assert got == pytest.approx(expected, rel=self.rel_tolerance), what
        else:
            assert got == expected, what

    def assert_metrics_match_log(self, tracker, data: RunData, log) -> None:
        for name, history in log.metrics.items():
            if name in self.ignored_metrics:
                continue
            stored = data.metrics.get(self.expected_name(tracker, name))
            assert stored is not None, (
                f"metric {name!r} missing; backend has {sorted(data.metrics)}"
            )
            assert [s for s, _ in stored] == [s for s, _ in history], f"steps of {name!r}"
            for (step, got), (_, expected) in zip(stored, history):
                self.assert_same_value(got, expected, f"{name!r} at step {step}")

    # -- the suite ---------------------------------------------------------------------

    def test_params_and_config_arrive(self, trackmux_env):
        trainer, tracker = self.train(trackmux_env)
        data = self.read_back(tracker, trackmux_env)
        expected = {
            "learning_rate": 0.01,
            "max_steps": 8,
            "per_device_train_batch_size": 8,
            "dataset": "toy-regression",
        }
        for key, value in expected.items():
            name = self.expected_name(tracker, key)
            assert name in data.params, f"param {key!r} missing; got {sorted(data.params)[:20]}"
            got = data.params[name]
            if self.params_as_strings:
                assert str(got) == str(value), key
            else:
                assert got == value, key

    def test_every_metric_at_every_step(self, trackmux_env):
        trainer, tracker = self.train(trackmux_env)
        data = self.read_back(tracker, trackmux_env)
        log = jsonl_log(trackmux_env / "out")
        assert [s for s, _ in log.history("train/loss")] == [2, 4, 6, 8]
        assert [s for s, _ in log.history("eval/loss")] == [4, 8]
        self.assert_metrics_match_log(tracker, data, log)
        for name, expected in log.summary.items():
            if name in self.ignored_metrics:
                continue
            stored = data.metrics.get(self.expected_name(tracker, name))
            assert stored, f"summary value {name!r} missing; backend has {sorted(data.metrics)}"
            self.assert_same_value(stored[-1][1], expected, f"summary {name!r}")

    def test_a_plain_loop_run_arrives(self, trackmux_env):
        """trackmux.start_run feeds the tracker the same way the Trainer does."""
        import trackmux

        tracker = self.make_tracker(trackmux_env)
        config = {"learning_rate": 0.5, "optimizer": {"name": "sgd"}}
        with trackmux.start_run(
            ["jsonl"], trackers=[tracker], config=config, output_dir=trackmux_env / "out"
        ) as run:
            for step in range(1, 6):
                run.log({"train/loss": 1.0 / step, "train/accuracy": step / 10}, step=step)
        data = self.read_back(tracker, trackmux_env)
        log = jsonl_log(trackmux_env / "out")
        assert [s for s, _ in log.history("train/loss")] == [1, 2, 3, 4, 5]
        self.assert_metrics_match_log(tracker, data, log)
        name = self.expected_name(tracker, "learning_rate")
        assert str(data.params.get(name)) == "0.5", f"param missing; got {sorted(data.params)}"
        if data.status is not None:
            assert data.status == "success"

    def test_params_added_after_start_arrive(self, trackmux_env):
        from trackmux import Tracker

        if type(self.make_tracker(trackmux_env)).log_params is Tracker.log_params:
            pytest.skip("this tracker cannot add params to an open run (documented)")
        import trackmux

        tracker = self.make_tracker(trackmux_env)
        with trackmux.start_run(
            ["jsonl"], trackers=[tracker], config={"early": 1}, output_dir=trackmux_env / "out"
        ) as run:
            run.log({"train/loss": 1.0}, step=1)
            run.log_params({"late": 2})
        data = self.read_back(tracker, trackmux_env)
        for key, value in {"early": 1, "late": 2}.items():
            name = self.expected_name(tracker, key)
            assert str(data.params.get(name)) == str(value), f"{key}: got {data.params}"

    def test_no_metric_overwrites_another(self, trackmux_env, caplog):
        """Names the backend would merge (what this tracker's sanitize_name maps to one name)
        and over-long names each arrive as their own series; one warning per merged pair."""
        import logging

        import trackmux

        tracker = self.make_tracker(trackmux_env)
        pairs = [
            (kept, other)
            for kept, other in COLLIDING_CANDIDATES
            if tracker.sanitize_name(kept) == tracker.sanitize_name(other)
        ]
        names = list(dict.fromkeys([name for pair in pairs for name in pair] + LONG_NAMES))

        def value(index: int, step: int) -> float:
            return index * 10 + step / 4  # exact in float32 too

        with (
            caplog.at_level(logging.WARNING, logger="trackmux"),
            trackmux.start_run(
                ["jsonl"], trackers=[tracker], output_dir=trackmux_env / "out"
            ) as run,
        ):
            for step in (1, 2, 3):
                run.log({name: value(i, step) for i, name in enumerate(names)}, step=step)
        data = self.read_back(tracker, trackmux_env)
        tolerance = max(self.rel_tolerance, 1e-12)
        stored_under = {}
        for index, name in enumerate(names):
            expected = [(step, value(index, step)) for step in (1, 2, 3)]
            found = [
                key
                for key, series in data.metrics.items()
                if [step for step, _ in series] == [1, 2, 3]
                and [v for _, v in series] == pytest.approx([v for _, v in expected], rel=tolerance)
            ]
            assert len(found) == 1, (
                f"series of {name[:40]!r} (logged as {expected}) found under {found}; "
                f"backend has {sorted(key[:40] for key in data.metrics)}"
            )
            stored_under[name] = found[0]
        assert len(set(stored_under.values())) == len(names), stored_under
        mapped = run.metric_names(tracker.name)
        for name, key in stored_under.items():
            assert key == mapped.get(name, name), f"{name[:40]!r} stored as {key[:40]!r}"
        for kept, other in pairs:
            assert stored_under[kept] == tracker.sanitize_name(kept), f"{kept!r} keeps its name"
            warned = [
                record
                for record in caplog.records
                if repr(kept) in record.getMessage() and repr(other) in record.getMessage()
            ]
            assert len(warned) == 1, f"{len(warned)} warnings name {kept!r} and {other!r}"

    def test_secrets_never_reach_the_backend(self, trackmux_env):
        """No credential of a config full of them (every key form and value pattern trackmux
        redacts) is stored by the backend, in its params or in any file it wrote; the other
        params still arrive."""
        import trackmux

        tracker = self.make_tracker(trackmux_env)
        with trackmux.start_run(
            ["jsonl"], trackers=[tracker], config=SECRET_CONFIG, output_dir=trackmux_env / "out"
        ) as run:
            run.log({"train/loss": 1.0}, step=1)
        data = self.read_back(tracker, trackmux_env)
        for name, value in data.params.items():
            text = f"{name}={value}"
            assert SECRET_MARK not in text.lower(), f"a secret reached the backend: {text!r}"
        for path in Path(trackmux_env).rglob("*"):
            if path.is_file() and path.stat().st_size < 64 * 2**20:
                content = path.read_bytes().lower()
                assert SECRET_MARK.encode() not in content, f"a secret is stored in {path}"
        for key in ("learning_rate", "model_name", "max_tokens", "pad_token", "tokenizer"):
            name = self.expected_name(tracker, key)
            assert name in data.params, f"param {key!r} missing; got {sorted(data.params)}"
            got, value = data.params[name], SECRET_CONFIG[key]
            if self.params_as_strings:
                assert str(got) == str(value), key
            else:
                assert got == value, key

    def test_status_success(self, trackmux_env):
        trainer, tracker = self.train(trackmux_env)
        data = self.read_back(tracker, trackmux_env)
        if data.status is not None:
            assert data.status == "success"

    @pytest.mark.parametrize(
        "error, status", [(RuntimeError("boom"), "failed"), (KeyboardInterrupt(), "killed")]
    )
    def test_status_when_training_ends_early(self, trackmux_env, error, status):
        tracker = self.make_tracker(trackmux_env)
        with pytest.raises(type(error)):
            run_training(trackmux_env / "out", tracker, callbacks=[StopAt(5, error)])
        data = self.read_back(tracker, trackmux_env)
        log = jsonl_log(trackmux_env / "out")
        assert log.status == status
        if data.status is not None:
            assert data.status == status
        # what was logged before the error still arrived
        self.assert_metrics_match_log(tracker, data, log)

    def test_resume_continues_the_same_run(self, trackmux_env):
        tracker = self.make_tracker(trackmux_env)
        # interrupted at step 7: the last checkpoint is step 4, step 6 was logged after it
        with pytest.raises(KeyboardInterrupt):
            run_training(trackmux_env / "out", tracker, callbacks=[StopAt(7, KeyboardInterrupt())])
        resumed = self.make_tracker(trackmux_env)
        run_training(trackmux_env / "out", resumed, resume=True)
        data = self.read_back(resumed, trackmux_env)
        assert data.runs == 1, f"resuming opened {data.runs} backend runs instead of one"
        steps = [s for s, _ in data.metrics[self.expected_name(resumed, "train/loss")]]
        if self.purges_after_resume:
            assert steps == [2, 4, 6, 8]
        else:
            assert steps[:2] == [2, 4] and steps[-1] == 8
        if data.status is not None:
            assert data.status == "success"

    # -- the same tracker fed from the journal (the delivery process's engine) --------------

    def deliver(self, run_dir, tracker, entry=None, *, upto=None):
        """Feed ``tracker`` from the run journal in ``run_dir`` as the delivery process does
        (:class:`trackmux.replay.Replay`, following the journal), here, so that
        :meth:`read_back` can look at the object; ``upto`` stops after that many records.
        Returns the tracker's state entry."""
        from trackmux.replay import Journal, Replay

        if tracker.synchronous or tracker.needs_training_process():
            pytest.skip(f"{type(tracker).__name__} runs in the training process only")
        entry = dict(entry or {})
        replay = Replay(
            tracker.name,
            entry,
            lambda saved: None,
            tracker=tracker,
            output_dir=str(Path(run_dir).parents[1]),
            follow=True,
        )
        records = Journal(run_dir).read()
        replay.feed(records[:upto] if upto is not None else records)
        replay.end()
        return entry

    def test_every_metric_arrives_from_the_journal(self, trackmux_env):
        run_training(trackmux_env / "out")  # the journal alone
        log = jsonl_log(trackmux_env / "out")
        tracker = self.make_tracker(trackmux_env)
        entry = self.deliver(log.path, tracker)
        assert entry["records"] == len(log.records) and entry["status"] == "success"
        data = self.read_back(tracker, trackmux_env)
        self.assert_metrics_match_log(tracker, data, log)
        if data.status is not None:
            assert data.status == "success"

    def test_a_new_delivery_continues_the_same_run(self, trackmux_env):
        run_training(trackmux_env / "out")
        log = jsonl_log(trackmux_env / "out")
        half = len(log.records) // 2
        entry = self.deliver(log.path, self.make_tracker(trackmux_env), upto=half)
        assert entry["status"] == "killed" and entry["records"] == half
        resumed = self.make_tracker(trackmux_env)
        entry = self.deliver(log.path, resumed, entry)
        data = self.read_back(resumed, trackmux_env)
        assert data.runs == 1, f"a second delivery opened {data.runs} backend runs instead of one"
        self.assert_metrics_match_log(resumed, data, log)
        if data.status is not None:
            assert data.status == "success"

    def test_nothing_on_non_main_ranks(self, trackmux_env, monkeypatch):
        from trackmux import Trainer, TrainingArguments
        from trackmux.distributed import DistributedContext
        from trackmux.hub import TrackerHub
        from trackmux.testing.toy import TinyRegressor

        created = []
        tracker_class = self.tracker_class

        class Counting(tracker_class):
            def __init__(self, *args, **kwargs):
                created.append(self)
                super().__init__(*args, **kwargs)

        args = TrainingArguments(output_dir=str(trackmux_env / "out"), report_to="none")
        trainer = Trainer(TinyRegressor(), args, trackers=[])
        trainer.distributed = DistributedContext(world_size=2, rank=1, local_rank=1)
        from trackmux.plugins import get_registry

        registry = get_registry()
        monkeypatch.setitem(registry.plugins, tracker_class.name, _info_for(Counting))
        trainer.args.report_to = [tracker_class.name]
        hub = TrackerHub.for_trainer(trainer)
        assert hub.trackers == [] and created == []

    def test_unavailable_backend_is_reported(self, monkeypatch):
        from trackmux.plugins import UNAVAILABLE, PluginRegistry

        if not self.tracker_class.requires:
            pytest.skip("this tracker has no backend requirement")
        missing = {_distribution(text) for text in self.tracker_class.requires}
        real_version = importlib.metadata.version

        def version(name):
            if name in missing:
                raise importlib.metadata.PackageNotFoundError(name)
            return real_version(name)

        monkeypatch.setattr(importlib.metadata, "version", version)
        registry = PluginRegistry()
        registry.add_tracker(self.tracker_class)
        info = registry.get(self.tracker_class.name)
        assert info.status == UNAVAILABLE
        assert "not installed" in info.reason
        assert info.fix.startswith("pip install ")
        from trackmux.report_to import ReportToError, resolve

        with pytest.raises(ReportToError, match="cannot run"):
            resolve([self.tracker_class.name], registry)
        assert info.name in [name for name, _ in resolve("all", registry).skipped]


#: name pairs some backend maps to one name (empty "/" parts, characters it drops or
#: replaces, emoji); the suite uses those the tracker's own sanitize_name merges. The first
#: of each pair is logged first and keeps the plain name.
COLLIDING_CANDIDATES: tuple[tuple[str, str], ...] = (
    ("acc/top1", "acc//top1"),
    ("acc/top1", "acc/top1/"),
    ("acc/top1", "/acc/top1"),
    ("acc_top1", "acc@top1"),
    ("acc_top1", "acc#top1"),
    ("loss \U0001f525", "loss \U0001f680"),
    ("grad norm", "grad\tnorm"),
)
#: over 255 bytes (a path component) and 250 characters (MLflow), and alike for 290
LONG_NAMES = ["long/" + "m" * 295, "long/" + "m" * 290 + "other"]


def _distribution(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


def _info_for(tracker_class):
    from trackmux.plugins import AVAILABLE, PluginInfo

    return PluginInfo(
        name=tracker_class.name,
        distribution=None,
        version=None,
        status=AVAILABLE,
        tracker_class=tracker_class,
    )


_HIDDEN_BACKEND = """
import importlib.metadata, json, sys
name, distribution, module, version = sys.argv[1:5]
real_version = importlib.metadata.version
def patched(requested):
    if requested.replace("-", "_").lower() == distribution.replace("-", "_").lower():
        if version == "missing":
            raise importlib.metadata.PackageNotFoundError(requested)
        return version
    return real_version(requested)
importlib.metadata.version = patched

from trackmux.plugins import get_registry
from trackmux.report_to import ReportToError, resolve
info = get_registry().get(name)
try:
    resolve([name], get_registry())
    error = None
except ReportToError as raised:
    error = str(raised)
skipped = dict(resolve("all", get_registry()).skipped)
print(json.dumps({"status": info.status, "reason": info.reason, "fix": info.fix,
                  "error": error, "skipped": skipped.get(name),
                  "imported": module in sys.modules}))
"""


def hidden_backend_report(name: str, distribution: str, module: str, version=None) -> dict:
    """How an installed plugin reports itself when its backend is missing (``version`` None)
    or installed at ``version``: in a fresh process whose distribution metadata says so, the
    real entry point is discovered and report_to resolved. Returns the plugin's status,
    reason and fix, the ReportToError an explicit ``report_to=[name]`` raises, why "all"
    skips it, and whether the backend module got imported (it must not)."""
    import json
    import sys

    from trackmux.testing.processes import run_child

    output = run_child(
        [sys.executable, "-c", _HIDDEN_BACKEND, name, distribution, module, version or "missing"]
    ).stdout
    return json.loads(output)


_DISCOVERY = """
import json, sys
name, package, roots = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
__import__(package)
from trackmux.plugins import get_registry
from trackmux.report_to import resolve
registry = get_registry(refresh=True)
info = registry.get(name)
skipped = dict(resolve("all", registry).skipped).get(name)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in roots)
print(json.dumps({"available": info.available, "distribution": info.distribution,
                  "mode": info.mode(), "skipped": skipped, "heavy": heavy}))
"""


def discovery_report(name: str, package: str, heavy, env=None, cwd=None) -> dict:
    """In a fresh process: import the plugin ``package``, discover plugins and resolve
    ``report_to="all"``. Returns whether ``name`` is available, its distribution and mode,
    why "all" skips it (or None), and which of the ``heavy`` top-level modules got imported
    (a plugin's discovery must import none: not torch, not its backend)."""
    import json
    import sys

    from trackmux.testing.processes import run_child

    output = run_child(
        [sys.executable, "-c", _DISCOVERY, name, package, ",".join(heavy)], env=env, cwd=cwd
    ).stdout
    return json.loads(output)
