"""trackmux plugin for MLflow (``report_to="mlflow"``).

Importing this module costs nothing: mlflow (about 2.5 s to import) loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import MlflowTracker

    register(MlflowTracker)
