"""trackmux plugin for DVCLive (``report_to="dvclive"``).

Importing this module costs nothing: dvclive (and DVC under it) load when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import DVCLiveTracker

    register(DVCLiveTracker)
