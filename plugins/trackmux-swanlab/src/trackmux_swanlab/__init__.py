"""trackmux plugin for SwanLab (``report_to="swanlab"``).

Importing this module costs nothing: swanlab (about 2 s to import) loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import SwanLabTracker

    register(SwanLabTracker)
