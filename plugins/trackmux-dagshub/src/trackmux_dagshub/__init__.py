"""trackmux plugin for DagsHub (``report_to="dagshub"``): an MLflow run in a repository's
DagsHub-hosted MLflow server.

Importing this module costs nothing: mlflow loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import DagsHubTracker

    register(DagsHubTracker)
