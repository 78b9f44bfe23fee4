"""trackmux plugin for Trackio (``report_to="trackio"``).

Importing this module costs nothing: trackio (about 1.5 s to import, huggingface_hub and
pandas with it) loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import TrackioTracker

    register(TrackioTracker)
