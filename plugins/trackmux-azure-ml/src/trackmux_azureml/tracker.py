"""The Azure ML tracker: inside an Azure ML job, logs into the job's own MLflow run.

Azure ML tracks jobs through MLflow: every job starts with ``MLFLOW_TRACKING_URI`` (an
``azureml://`` URI that the azureml-mlflow plugin of mlflow understands), ``MLFLOW_RUN_ID``
(the job's run, the same id as ``AZUREML_RUN_ID``) and the workspace in ``AZUREML_ARM_*``.
So this tracker is the MLflow tracker (:class:`trackmux_mlflow.tracker.MlflowTracker`) with
three differences: it logs into the job's run and never ends it (Azure ML does, with the
job), it keeps params within Azure ML's cap, and outside a job it stays inactive: an
``azureml://`` URI cannot work without the job's credentials, and trying would walk Azure's
whole credential chain (managed identity, CLI, browser).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from trackmux.tracker import RunInfo
from trackmux_mlflow.tracker import MlflowTracker

logger = logging.getLogger(__name__)

#: set by Azure ML in every job (azureml-mlflow reads the same variables)
RUN_ID_ENV = "AZUREML_RUN_ID"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
SUBSCRIPTION_ENV = "AZUREML_ARM_SUBSCRIPTION"
RESOURCE_GROUP_ENV = "AZUREML_ARM_RESOURCEGROUP"
WORKSPACE_ENV = "AZUREML_ARM_WORKSPACE_NAME"
EXPERIMENT_ENV = "AZUREML_ARM_PROJECT_NAME"
#: Azure ML refuses a run with more than 100 params (transformers #18870, Azure/mlops-v2 #86)
AZURE_MAX_PARAMS = 100


def job_problem() -> str | None:
    """Why this process is not an Azure ML job that tracks through MLflow; None inside one."""
    if not os.environ.get(RUN_ID_ENV):
        return (
            f"not inside an Azure ML job ({RUN_ID_ENV} is not set); outside a job, use "
            "report_to='mlflow' with MLFLOW_TRACKING_URI"
        )
    if not os.environ.get(TRACKING_URI_ENV):
        return (
            f"{RUN_ID_ENV} is set but {TRACKING_URI_ENV} is not: this Azure ML job does not "
            "provide an MLflow tracking URI"
        )
    return None


def _mlflow_tracker_reports() -> bool:
    """True when trackmux's own mlflow tracker is registered and would join report_to='all':
    inside a job it logs into the job's run through the same variables."""
    from trackmux.plugins import get_registry

    info = get_registry().get(MlflowTracker.name)
    return bool(info and info.available and info.tracker_class.unconfigured_reason() is None)


class AzureMLTracker(MlflowTracker):
    """Logs a trackmux run into the Azure ML job's MLflow run; inactive outside a job.

    Settings (``tracker_config={"azure_ml": {...}}``): those of the MLflow tracker, of which
    ``max_log_params`` (MLFLOW_MAX_LOG_PARAMS) defaults to Azure ML's 100 and ``artifacts``
    (HF_MLFLOW_LOG_ARTIFACTS) to ``end``, the final model.
    """

    name = "azure_ml"
    requires = ("mlflow>=2.10", "azureml-mlflow>=1.60")
    backend_modules = ("mlflow", "azureml.mlflow")

    def __init__(self, **settings):
        super().__init__(**settings)
        self.inactive: str | None = None
        self._warned = False

    # -- configuration ------------------------------------------------------------------

    @classmethod
    def unconfigured_reason(cls) -> str | None:
        problem = job_problem()
        if problem:
            return problem
        if _mlflow_tracker_reports():
            # Hugging Face's rule, against the same double logging (Azure/azureml-examples#425)
            return (
                "the mlflow tracker already logs into this Azure ML job's run; name azure_ml "
                "in report_to (without mlflow) to use it instead"
            )
        return None

    @classmethod
    def mode(cls) -> str:
        return "offline" if job_problem() else "online"

    def where(self) -> str | None:
        if self.inactive:
            return f"inactive: {self.inactive}"
        if self.run_id is None:
            return None
        workspace = [
            os.environ.get(n) for n in (SUBSCRIPTION_ENV, RESOURCE_GROUP_ENV, WORKSPACE_ENV)
        ]
        if all(workspace):
            subscription, group, name = workspace
            scope = f"/subscriptions/{subscription}/resourcegroups/{group}/workspaces/{name}"
            return f"https://ml.azure.com/runs/{self.run_id}?wsid={scope}"
        return super().where()

    def artifact_policy(self, default: str = "none") -> str:
        if job_problem():
            return "none"  # nothing would receive it: do not even save a final model
        if default == "none" and self.setting("artifacts", env=self.artifacts_env) is None:
            return "end"  # the job's model is what an Azure ML user registers afterwards
        return super().artifact_policy(default)

    # -- the run ------------------------------------------------------------------------

    def prepare(self, run: RunInfo) -> None:
        self.inactive = job_problem() or self._mlflow_also_chosen(run)
        if self.inactive:
            if not self._warned:
                logger.warning("azure_ml: inactive, logging nothing: %s", self.inactive)
                self._warned = True
            return
        super().prepare(run)

    @staticmethod
    def _mlflow_also_chosen(run: RunInfo) -> str | None:
        report_to = getattr(run.args, "report_to", None)
        if report_to is None:
            return None
        from trackmux.plugins import get_registry
        from trackmux.report_to import ReportToError, resolve

        try:
            selection = resolve(report_to, get_registry(), {"azure_ml"})
        except ReportToError:  # names only objects passed in trackers=[...]: not mlflow's
            return None
        chosen = [info.name for info in selection.chosen]
        if MlflowTracker.name in chosen:
            return (
                f"the mlflow tracker also reports to this job's run (report_to={report_to!r}); "
                "azure_ml stays out so that every value is logged once"
            )
        return None

    def start(self, run: RunInfo) -> dict[str, Any] | None:
        # prepare() decided, unless start() is called on its own
        self.inactive = self.inactive or job_problem()
        if self.inactive:
            return None
        self.run_info = run  # _log_params orders the params by where they come from
        return super().start(run)

    def _open_run(self, name: str, resume: dict, user_run: tuple[str, str] | None) -> None:
        # the user's own ``mlflow.start_run()`` wins (inside a job mlflow starts it in the
        # job's run anyway), then the job's run; never a new run, and never owned: Azure ML
        # ends the job's run with the job, and a restarted job continues its own run
        if user_run:
            run_id = user_run[0]
        else:
            run_id = self.setting("run_id", env="MLFLOW_RUN_ID") or os.environ[RUN_ID_ENV]
        self._reopen(str(run_id), owned=False, required=True)

    def _log_params(self, config: dict[str, Any]) -> None:
        limit = self.setting(
            "max_log_params", AZURE_MAX_PARAMS, env="MLFLOW_MAX_LOG_PARAMS", cast=int
        )
        if len(config) > limit:
            # the user's own hyperparameters and the model's config matter more than the
            # long tail of TrainingArguments defaults: they go first
            arguments = set(getattr(self.run_info.args, "__dataclass_fields__", ()))
            ordered = sorted(config, key=lambda key: key in arguments)
            left_out = ordered[limit:]
            logger.warning(
                "azure_ml: logging %d of %d params (Azure ML's limit; set max_log_params or "
                "MLFLOW_MAX_LOG_PARAMS to change it); left out: %s%s",
                limit,
                len(config),
                ", ".join(left_out[:10]),
                f" and {len(left_out) - 10} more" if len(left_out) > 10 else "",
            )
            config = {key: config[key] for key in ordered[:limit]}
        super()._log_params(config)

    # -- inactive: nothing to do ------------------------------------------------------------

    def log_metrics_batch(self, records) -> None:
        # the MLflow plugin's log_metrics comes here too
        if not self.inactive:
            super().log_metrics_batch(records)

    def log_params(self, params) -> None:
        if not self.inactive:
            super().log_params(params)

    def log_artifact(self, path: str, kind: str, step: int) -> None:
        if not self.inactive:
            super().log_artifact(path, kind, step)

    def finish(self, status: str) -> None:
        if not self.inactive:
            super().finish(status)
