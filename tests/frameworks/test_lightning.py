"""TrackmuxLogger with a real Lightning Trainer on a tiny model (CPU): every metric Lightning
hands its loggers arrives in the jsonl run log, TensorBoard and a real MLflow server at its
step; hyperparameters, statuses, validate/test after fit, rank zero and the docs example."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

pytest.importorskip("lightning")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from framework_support import (  # noqa: E402
    close_to,
    doc_examples,
    import_error_without,
    mlflow_metrics,
    run_script,
    tensorboard_scalars,
)
from lightning.pytorch.loggers import Logger  # noqa: E402
from lightning.pytorch.utilities import rank_zero_only  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from trackmux.integrations.lightning import TrackmuxLogger  # noqa: E402
from trackmux.run import Run  # noqa: E402
from trackmux.runlog import read_run  # noqa: E402
from trackmux.testing import describe_child  # noqa: E402
from trackmux.testing.toy import RegressionDataset  # noqa: E402


class Regression(L.LightningModule):
    def __init__(self, lr: float = 0.05, hidden: int = 16, fail_at: int | None = None, error=None):
        super().__init__()
        self.save_hyperparameters(ignore=["fail_at", "error"])
        self.fail_at, self.error = fail_at, error
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1)
        )

    def loss(self, batch):
        return torch.nn.functional.mse_loss(self.net(batch["x"]), batch["labels"])

    def training_step(self, batch, index):
        if self.global_step == self.fail_at:
            raise self.error
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, index):
        self.log("val_loss", self.loss(batch))

    def test_step(self, batch, index):
        self.log("test_loss", self.loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


class Recorder(Logger):
    """What Lightning hands a logger: the truth the run log is compared with."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    name = "recorder"
    version = "0"

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def expected_from(calls) -> dict[str, list[tuple[int, float]]]:
    history: dict[str, list] = {}
    for step, metrics in calls:
        for name, value in metrics.items():
            if name != "epoch":
                history.setdefault(name, []).append((step, value))
    return history


def loaders():
    train = DataLoader(RegressionDataset(32), batch_size=8)
    return train, DataLoader(RegressionDataset(16, seed=1), batch_size=8)


def fit(logger, model=None, **overrides) -> tuple[L.Trainer, Recorder]:
    recorder = Recorder()
    options = {
        "max_epochs": 2,
        "log_every_n_steps": 1,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        **overrides,
    }
    trainer = L.Trainer(logger=[logger, recorder], **options)
    torch.manual_seed(0)
    trainer.fit(model or Regression(), *loaders())
    return trainer, recorder


def test_import_without_lightning_names_the_extra(tmp_path):
    assert "pip install 'trackmux[lightning]'" in import_error_without("lightning", tmp_path)


def test_every_logged_metric_reaches_the_run_log(trackmux_env):
    logger = TrackmuxLogger(trackmux_env / "logs", "tiny", report_to=["jsonl"])
    trainer, recorder = fit(logger)

    expected = expected_from(recorder.calls)
    assert set(expected) == {"train_loss", "val_loss"}
    assert [step for step, _ in expected["train_loss"]] == list(range(8))
    run = read_run(logger.log_dir)
    assert run.metrics == expected
    assert run.status == "success"
    assert run.config == {"lr": 0.05, "hidden": 16}
    epochs = [r["epoch"] for r in run.records if r["type"] == "metrics"]
    assert epochs == [metrics["epoch"] for _, metrics in recorder.calls]
    # the run log's directory is the logger's log_dir, where the checkpoints go too
    assert Path(logger.log_dir) == trackmux_env / "logs" / "runs" / "tiny"
    assert (logger.name, logger.version) == ("runs", "tiny")
    assert list((Path(logger.log_dir) / "checkpoints").glob("*.ckpt"))
    assert trainer.checkpoint_callback.dirpath == str(Path(logger.log_dir) / "checkpoints")


def test_tensorboard_gets_the_same_points(trackmux_env):
    pytest.importorskip("trackmux_tensorboard")
    logger = TrackmuxLogger(trackmux_env / "logs", "tb", report_to=["jsonl", "tensorboard"])
    fit(logger)
    run = read_run(logger.log_dir)
    scalars = tensorboard_scalars(Path(logger.log_dir) / "tensorboard")
    assert set(scalars) == set(run.metrics)
    for name, history in run.metrics.items():
        assert close_to(scalars[name], history), name


def test_mlflow_gets_the_same_points(trackmux_env, mlflow_server):
    from mlflow.tracking import MlflowClient

    logger = TrackmuxLogger(
        trackmux_env / "logs",
        "pl-mlflow",
        report_to=["jsonl", "mlflow"],
        tracker_config={"mlflow": {"tracking_uri": mlflow_server, "experiment_name": "lightning"}},
    )
    fit(logger)
    run = read_run(logger.log_dir)
    run_id = logger.last_run.identities["mlflow"]["run_id"]
    stored = mlflow_metrics(mlflow_server, run_id, run.metrics)
    for name, history in run.metrics.items():
        assert stored[name] == history, name
    mlflow_run = MlflowClient(mlflow_server).get_run(run_id)
    assert mlflow_run.info.status == "FINISHED"
    assert mlflow_run.info.run_name == "pl-mlflow"
    assert mlflow_run.data.params == {"lr": "0.05", "hidden": "16"}


def test_an_exception_fails_the_run(trackmux_env):
    logger = TrackmuxLogger(trackmux_env / "logs", "crash", report_to=["jsonl"])
    with pytest.raises(RuntimeError, match="boom"):
        fit(logger, Regression(fail_at=5, error=RuntimeError("boom")))
    run = read_run(logger.log_dir)
    assert run.status == "failed"
    assert [step for step, _ in run.metrics["train_loss"]] == [0, 1, 2, 3, 4]


def test_ctrl_c_kills_the_run(trackmux_env):
    logger = TrackmuxLogger(trackmux_env / "logs", "interrupted", report_to=["jsonl"])
    sigint = signal.getsignal(signal.SIGINT)
    try:
        # Lightning's graceful shutdown: finalize("failed"), then sys.exit(1) (before 2.4 fit
        # returned instead)
        with contextlib.suppress(SystemExit):
            fit(logger, Regression(fail_at=3, error=KeyboardInterrupt()))
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from then on
    assert read_run(logger.log_dir).status == "killed"


def test_validate_and_test_after_fit_reopen_the_run(trackmux_env):
    logger = TrackmuxLogger(trackmux_env / "logs", "tiny", report_to=["jsonl"])
    trainer, recorder = fit(logger)
    model = trainer.lightning_module
    trainer.validate(model, loaders()[1], verbose=False)
    trainer.test(model, loaders()[1], verbose=False)

    run = read_run(logger.log_dir)
    assert run.sessions == 3
    assert run.statuses == ["success", "success", "success"]
    assert run.metrics == expected_from(recorder.calls)
    assert [step for step, _ in run.metrics["test_loss"]] == [8]
    assert [r["kind"] for r in run.records if r["type"] == "start"] == [
        "train",
        "evaluate",
        "evaluate",
    ]


REOPEN_SCRIPT = """
import lightning as L
import torch
from torch.utils.data import DataLoader
from trackmux.integrations.lightning import TrackmuxLogger
from trackmux.testing.toy import RegressionDataset

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 1)
    def training_step(self, batch, index):
        loss = torch.nn.functional.mse_loss(self.net(batch["x"]), batch["labels"])
        self.log("train_loss", loss)
        return loss
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

logger = TrackmuxLogger("logs", "after", report_to=["jsonl"])
trainer = L.Trainer(max_steps=2, logger=logger, log_every_n_steps=1, accelerator="cpu",
                    enable_progress_bar=False, enable_model_summary=False,
                    enable_checkpointing=False)
trainer.fit(Tiny(), DataLoader(RegressionDataset(16), batch_size=8))
logger.experiment.log({"extra": 1.0}, step=2)  # reopens the run; nothing finalizes it
"""


def test_a_run_reopened_after_fit_is_finished_at_exit(trackmux_env):
    result = run_script(REOPEN_SCRIPT, trackmux_env)
    assert result.returncode == 0, describe_child(result)
    run = read_run(trackmux_env / "logs" / "runs" / "after")
    assert run.statuses == ["success", "success"]
    assert run.metrics["extra"] == [(2, 1.0)]
    assert [step for step, _ in run.metrics["train_loss"]] == [0, 1]


def test_hyperparameters_after_the_first_metrics_are_delivered_as_params(trackmux_env):
    logger = TrackmuxLogger(trackmux_env / "logs", "late", report_to=["jsonl"], config={"a": 1})
    logger.log_hyperparams({"b": 2})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_hyperparams({"c": {"d": 3}})
    logger.finalize("success")

    run = read_run(logger.log_dir)
    starts = [r for r in run.records if r["type"] == "start"]
    assert starts[0]["config"] == {"a": 1, "b": 2}
    assert [r["params"] for r in run.records if r["type"] == "params"] == [{"c/d": 3}]
    assert run.config == {"a": 1, "b": 2, "c/d": 3}
    assert run.metrics == {"loss": [(0, 1.0)]}


def test_the_experiment_is_the_trackmux_run(trackmux_env):
    logger = TrackmuxLogger(trackmux_env / "logs", "exp", report_to=["jsonl"])
    assert isinstance(logger.experiment, Run)
    logger.experiment.log({"custom": 2.0}, step=3)
    logger.finalize("success")
    assert read_run(logger.log_dir).metrics == {"custom": [(3, 2.0)]}


def test_other_ranks_log_nothing(trackmux_env, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = TrackmuxLogger(trackmux_env / "logs", "rank1", report_to=["jsonl"])
    assert not isinstance(logger.experiment, Run)  # Lightning's dummy experiment
    logger.log_hyperparams({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.finalize("success")
    assert not (trackmux_env / "logs").exists()


def test_the_documented_example_runs(trackmux_env):
    blocks = doc_examples("integrations/lightning.md")
    assert len(blocks) == 1, "docs/integrations/lightning.md lost its runnable example"
    result = run_script(blocks[0], trackmux_env)
    assert result.returncode == 0, describe_child(result)
    run = read_run(trackmux_env / "logs" / "runs" / "tiny-lightning")
    assert run.status == "success"
    assert run.config == {"lr": 0.05}
    assert [step for step, _ in run.metrics["train_loss"]] == list(range(8))
    assert [step for step, _ in run.metrics["val_loss"]] == [3, 7]
