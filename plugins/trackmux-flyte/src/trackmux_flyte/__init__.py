"""trackmux plugin for Flyte (``report_to="flyte"``).

Importing this module costs nothing: flytekit loads when a run starts inside a Flyte task.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import FlyteTracker

    register(FlyteTracker)
