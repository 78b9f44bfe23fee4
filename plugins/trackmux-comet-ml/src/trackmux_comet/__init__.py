"""trackmux plugin for Comet (``report_to="comet_ml"``).

Importing this module costs nothing: comet_ml loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import CometTracker

    register(CometTracker)
