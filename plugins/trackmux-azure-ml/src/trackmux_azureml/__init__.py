"""trackmux plugin for Azure ML (``report_to="azure_ml"``).

Importing this module costs nothing: mlflow and azureml-mlflow load when a run starts inside
an Azure ML job, and never outside one.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import AzureMLTracker

    register(AzureMLTracker)
