"""trackmux plugin for Aim (``report_to="aim"``, accelerate's name for it).

Importing this module costs nothing: aim (about 2 s to import) loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import AimTracker

    register(AimTracker)
