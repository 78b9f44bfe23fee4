"""The Tracker base and hub: async delivery, back-pressure, error isolation, strict mode,
bounded close, flush at save, run identity, one run across train/evaluate, settings,
artifact policy, value handling. Fakes are fine here: these are the core's own rules."""

import json
import logging
import os
import threading

import pytest
import torch

from trackmux import (
    Tracker,
    TrackerError,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    delivery,
    hookimpl,
)
from trackmux.testing.toy import RegressionDataset, TinyRegressor
from trackmux.values import MetricFilter, flatten, redact


class Recorder(Tracker):
    """Records every call it receives, in order."""

    name = "recorder"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.calls = []
        self.runs = []

    def start(self, run):
        self.runs.append(run)
        self.calls.append(("start", run.kind))
        return run.resume or {"id": f"run-{len(self.runs)}"}

    def log_metrics(self, metrics, step, epoch=None):
        self.calls.append(("metrics", step, dict(metrics)))

    def log_summary(self, metrics, step):
        self.calls.append(("summary", step, dict(metrics)))

    def log_artifact(self, path, kind, step):
        self.calls.append(("artifact", kind, step, path))

    def flush(self):
        self.calls.append(("flush",))

    def finish(self, status):
        self.calls.append(("finish", status))

    def of(self, kind):
        return [call for call in self.calls if call[0] == kind]


def make_trainer(tmp_path, trackers, callbacks=(), tracker_config=None, **overrides):
    values = {
        "output_dir": str(tmp_path / "out"),
        "max_steps": 6,
        "logging_steps": 1,
        "save_strategy": "no",
        "disable_tqdm": True,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        **overrides,
    }
    return Trainer(
        TinyRegressor(),
        TrainingArguments(**values),
        train_dataset=RegressionDataset(16),
        eval_dataset=RegressionDataset(8, seed=1),
        trackers=trackers,
        callbacks=list(callbacks),
        tracker_config=tracker_config,
    )


def test_calls_arrive_in_order_with_namespaced_names(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [recorder])
    trainer.train()
    assert recorder.calls[0] == ("start", "train")
    steps = [call[1] for call in recorder.of("metrics")]
    assert steps == [1, 2, 3, 4, 5, 6]
    first = recorder.of("metrics")[0][2]
    assert set(first) == {"train/loss", "train/grad_norm", "train/learning_rate"}
    assert first["train/loss"] == trainer.state.log_history[0]["loss"]
    summary = recorder.of("summary")[0]
    assert summary[1] == 6 and "train/train_runtime" in summary[2]
    assert recorder.calls[-1] == ("finish", "success")


def test_training_never_waits_for_a_blocked_tracker(tmp_path):
    released = threading.Event()

    class Blocked(Recorder):
        def log_metrics(self, metrics, step, epoch=None):
            assert released.wait(120), "the training loop never released the tracker"
            super().log_metrics(metrics, step, epoch)

    class ReleaseAtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            self.steps_done = state.global_step
            released.set()

    blocked, release = Blocked(), ReleaseAtEnd()
    make_trainer(tmp_path, [blocked], callbacks=[release]).train()
    # all six steps ran while the tracker was stuck on its first record...
    assert release.steps_done == 6
    # ...and nothing was lost once it recovered
    assert [call[1] for call in blocked.of("metrics")] == [1, 2, 3, 4, 5, 6]


def test_full_queue_makes_the_loop_wait_and_says_so(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(delivery, "STALL_WARNING_AFTER", 0.05)
    warned = threading.Event()

    class Warned(logging.Handler):
        def emit(self, record):
            if "is behind: its queue is full" in record.getMessage():
                warned.set()

    class Slow(Recorder):
        def log_metrics(self, metrics, step, epoch=None):
            warned.wait(120)  # behind until the loop, waiting on its full queue, says so
            super().log_metrics(metrics, step, epoch)

    slow, handler = Slow(), Warned()
    delivery.logger.addHandler(handler)
    try:
        make_trainer(tmp_path, [slow], tracker_queue_size=1).train()
    finally:
        delivery.logger.removeHandler(handler)
    assert [call[1] for call in slow.of("metrics")] == [1, 2, 3, 4, 5, 6]
    assert any("is behind: its queue is full" in r.getMessage() for r in caplog.records)


class Failing(Recorder):
    name = "failing"

    def log_metrics(self, metrics, step, epoch=None):
        raise ConnectionError("backend down")


def test_a_failing_tracker_is_reported_once_then_disabled(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("TRACKMUX_STRICT", raising=False)
    failing, healthy = Failing(), Recorder()
    trainer = make_trainer(tmp_path, [failing, healthy])
    trainer.train()
    assert trainer.state.global_step == 6
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    reports = [r for r in errors if "failed in log_metrics()" in r.getMessage()]
    assert len(reports) == 1
    assert "'failing'" in reports[0].getMessage()
    assert "ConnectionError: backend down" in reports[0].getMessage()  # the traceback
    assert any("is disabled" in r.getMessage() for r in errors)
    # the healthy tracker saw everything; the failing one was not called after disabling,
    # except for one try at closing its run
    assert len(healthy.of("metrics")) == 6
    assert failing.of("finish") == [("finish", "success")]


def test_strict_mode_raises_the_tracker_error(tmp_path):
    trainer = make_trainer(tmp_path, [Failing()], tracker_strict=True)
    with pytest.raises(TrackerError, match="'failing' failed: ConnectionError"):
        trainer.train()


def test_strict_mode_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TRACKMUX_STRICT", "1")
    with pytest.raises(TrackerError):
        make_trainer(tmp_path, [Failing()]).train()


def test_a_tracker_that_cannot_start_is_disabled(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("TRACKMUX_STRICT", raising=False)

    class NoStart(Recorder):
        name = "nostart"

        def start(self, run):
            raise PermissionError("no credentials")

    broken, healthy = NoStart(), Recorder()
    make_trainer(tmp_path, [broken, healthy]).train()
    assert broken.of("metrics") == [] and len(healthy.of("metrics")) == 6
    assert any("could not start" in r.getMessage() for r in caplog.records)


def test_closing_is_bounded_and_says_what_it_abandoned(tmp_path, caplog):
    gate = threading.Event()

    class Hangs(Recorder):
        name = "hangs"

        def finish(self, status):
            gate.wait(120)
            self.calls.append(("finish", status))

    hangs = Hangs()
    make_trainer(tmp_path, [hangs], tracker_close_timeout=0.3).train()
    still_hung = hangs.of("finish") == []
    gate.set()
    assert any("did not finish within" in r.getMessage() for r in caplog.records)
    assert still_hung  # the hang did not hold the end of training


def test_trackers_flush_at_every_save_and_identity_is_checkpointed(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [recorder], save_strategy="steps", save_steps=2)
    trainer.train()
    flushes = [i for i, call in enumerate(recorder.calls) if call == ("flush",)]
    assert len(flushes) >= 3  # saves at steps 2, 4, 6
    # trackmux's keys: beside trainer_state.json, which keeps transformers' schema (issue 16)
    saved = json.loads((tmp_path / "out" / "checkpoint-2" / "trackmux_state.json").read_text())
    assert saved["tracker_runs"]["recorder"] == {"id": "run-1"}
    assert saved["run_name"] == trainer.state.run_name


def test_resume_hands_the_saved_identity_back(tmp_path):
    class Stop(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 4:
                raise KeyboardInterrupt

    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, [first], [Stop()], save_strategy="steps", save_steps=2).train()
    assert first.calls[-1] == ("finish", "killed")
    second = Recorder()
    trainer = make_trainer(tmp_path, [second], save_strategy="steps", save_steps=2)
    trainer.train(resume_from_checkpoint=True)
    assert second.runs[0].resume == {"id": "run-1"}
    assert second.runs[0].name == first.runs[0].name
    assert [call[1] for call in second.of("metrics")] == [5, 6]


def test_evaluate_after_train_lands_in_the_same_run(tmp_path):
    recorder = Recorder()
    trainer = make_trainer(tmp_path, [recorder])
    trainer.train()
    trainer.evaluate()
    trainer.predict(RegressionDataset(8, seed=2))
    starts = recorder.of("start")
    assert [kind for _, kind in starts] == ["train", "evaluate", "predict"]
    assert recorder.runs[1].resume == {"id": "run-1"}
    assert recorder.runs[2].resume == {"id": "run-1"}
    assert recorder.of("finish") == [("finish", "success")] * 3
    eval_logged = recorder.of("metrics")[-2][2]
    test_logged = recorder.of("metrics")[-1][2]
    assert "eval/loss" in eval_logged and "test/loss" in test_logged


def test_evaluate_inside_training_does_not_open_a_second_run(tmp_path):
    recorder = Recorder()
    make_trainer(tmp_path, [recorder], eval_strategy="steps", eval_steps=3).train()
    assert len(recorder.of("start")) == 1
    assert [call[1] for call in recorder.of("metrics") if "eval/loss" in call[2]] == [3, 6]


def test_settings_in_code_win_over_environment(monkeypatch):
    monkeypatch.setenv("RECORDER_PROJECT", "from-env")
    assert Recorder().setting("project", env="RECORDER_PROJECT") == "from-env"
    assert Recorder(project="from-code").setting("project", env="RECORDER_PROJECT") == "from-code"
    assert Recorder().setting("other", default=3, env="UNSET_VAR_X") == 3


def test_tracker_config_reaches_registered_trackers(tmp_path):
    trainer = make_trainer(
        tmp_path, [], report_to=["jsonl"], tracker_config={"jsonl": {"dir": str(tmp_path / "j")}}
    )
    trainer.train()
    assert any((tmp_path / "j").iterdir())
    assert trainer.args.report_to == ["jsonl"]  # the user's arguments are not mutated


@pytest.mark.parametrize(
    "policy, expected",
    [
        ("checkpoint", [("checkpoint", 2), ("checkpoint", 4), ("checkpoint", 6)]),
        ("end", [("model", 6)]),
        ("last", [("checkpoint", 6)]),
        ("none", []),
    ],
)
def test_one_artifact_policy_for_every_tracker(tmp_path, policy, expected):
    recorder = Recorder()
    make_trainer(
        tmp_path, [recorder], save_strategy="steps", save_steps=2, tracker_artifacts=policy
    ).train()
    artifacts = recorder.of("artifact")
    assert [(kind, step) for _, kind, step, _ in artifacts] == expected
    for *_, path in artifacts:
        assert (tmp_path / "out").as_posix() in path
        assert os.path.isfile(os.path.join(path, "model.safetensors"))


def test_a_bad_artifact_setting_fails_before_the_first_step(tmp_path, monkeypatch):
    class WithEnv(Recorder):
        artifacts_env = "HF_RECORDER_LOG_ARTIFACTS"

    monkeypatch.setenv("HF_RECORDER_LOG_ARTIFACTS", "maybe")
    trainer = make_trainer(tmp_path, [WithEnv()])
    with pytest.raises(ValueError, match="HF_RECORDER_LOG_ARTIFACTS='maybe'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_plugin_setting_overrides_the_artifact_policy(monkeypatch):
    class WithEnv(Recorder):
        artifacts_env = "HF_RECORDER_LOG_ARTIFACTS"

    monkeypatch.setenv("HF_RECORDER_LOG_ARTIFACTS", "true")
    assert WithEnv().artifact_policy("none") == "end"
    assert WithEnv(artifacts="checkpoint").artifact_policy("none") == "checkpoint"
    monkeypatch.setenv("HF_RECORDER_LOG_ARTIFACTS", "sometimes")
    with pytest.raises(ValueError, match="HF_RECORDER_LOG_ARTIFACTS='sometimes' is not a policy"):
        WithEnv().artifact_policy("none")


def test_hooks_implemented_directly_are_error_isolated(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("TRACKMUX_STRICT", raising=False)

    class Watching(Recorder):
        name = "watching"

        @hookimpl
        def on_pre_optimizer_step(self, model, state):
            self.calls.append(("hook", state.global_step, type(model).__name__))
            if state.global_step == 1:
                raise RuntimeError("watch failed")

    watching = Watching()
    trainer = make_trainer(tmp_path, [watching])
    trainer.train()
    hooks = watching.of("hook")
    assert [step for _, step, _ in hooks] == [0, 1, 2, 3, 4, 5]
    assert hooks[0][2] == "TinyRegressor"
    assert trainer.state.global_step == 6
    assert any("failed in on_pre_optimizer_step()" in r.getMessage() for r in caplog.records)


def test_non_numeric_values_are_skipped_with_one_warning_per_key(caplog):
    metrics = MetricFilter()
    logs = {"loss": torch.tensor(0.5), "note": "hello", "epoch": 1.0, "flag": True}
    assert metrics.numeric(logs) == {"train/loss": 0.5, "train/flag": 1}
    metrics.numeric(logs)
    warnings = [r for r in caplog.records if "'note'" in r.getMessage()]
    assert len(warnings) == 1


def test_numpy_scalars_pass():
    import numpy as np

    assert MetricFilter().numeric({"eval_acc": np.float32(0.25), "test_n": np.int64(3)}) == {
        "eval/acc": 0.25,
        "test/n": 3,
    }


def test_params_are_flattened_and_secrets_redacted():
    flat = flatten({"model": {"hidden": 16, "layers": [1, 2]}, "lr": 0.1}, separator=".")
    assert flat == {"model.hidden": 16, "model.layers": "[1, 2]", "lr": 0.1}
    clean = redact(
        {"hub_token": "abc", "wandb_api_key": "k", "uri": "https://bob:pw@host/x", "lr": 1}
    )
    assert clean == {
        "hub_token": "***",
        "wandb_api_key": "***",
        "uri": "https://bob:***@host/x",
        "lr": 1,
    }


def test_backend_limits_are_applied_with_a_warning(tmp_path, caplog):
    class Limited(Recorder):
        name = "limited"
        max_param_value_length = 10
        max_name_length = 12

        def sanitize_name(self, name):
            return name.replace("@", "_")

    limited = Limited()
    trainer = make_trainer(tmp_path, [limited])
    trainer.hyperparameters = {"long": "x" * 50, "acc@1": 1}
    trainer.train()
    config = limited.runs[0].config
    assert config["long"] == "x" * 10
    assert config["acc_1"] == 1
    assert all(len(key) <= 12 for key in config)
    assert any("were cut" in r.getMessage() for r in caplog.records)


def test_defer_queues_a_call_from_a_direct_hook_onto_the_worker(tmp_path):
    class GradWatcher(Recorder):
        name = "grads"

        @hookimpl
        def on_pre_optimizer_step(self, model, state):
            biggest = max(p.grad.abs().max().item() for p in model.parameters())
            self.defer("log_metrics", {"grad/max": biggest}, state.global_step + 1)

    watcher = GradWatcher()
    make_trainer(tmp_path, [watcher], logging_steps=3).train()
    grads = [call for call in watcher.of("metrics") if "grad/max" in call[2]]
    assert [step for _, step, _ in grads] == [1, 2, 3, 4, 5, 6]
    steps_in_order = [call[1] for call in watcher.of("metrics")]
    assert steps_in_order == sorted(steps_in_order)  # queued in order with the train logs


def test_backend_output_is_quiet_unless_asked_for(monkeypatch):
    backend = logging.getLogger("test_trackers.chatty_backend")
    monkeypatch.setattr(backend, "level", logging.INFO)
    monkeypatch.delenv("TRACKMUX_BACKEND_OUTPUT", raising=False)
    Recorder().quiet_backend_loggers("test_trackers.chatty_backend")
    assert backend.level == logging.WARNING
    backend.setLevel(logging.INFO)
    monkeypatch.setenv("TRACKMUX_BACKEND_OUTPUT", "1")
    assert Recorder().backend_output() and not Recorder(backend_output=False).backend_output()
    Recorder().quiet_backend_loggers("test_trackers.chatty_backend")
    assert backend.level == logging.INFO  # the user asked for the backend's own lines
