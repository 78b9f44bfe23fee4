"""trackmux plugin for Neptune (``report_to="neptune"``).

Importing this module costs nothing: the neptune client (about 3-4 s to import) loads when a
run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import NeptuneTracker

    register(NeptuneTracker)
