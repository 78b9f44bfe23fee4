"""trackmux-csvlog: a trackmux tracker plugin writing each run's metrics to a CSV file.

trackmux imports this module through the ``trackmux`` entry point of this distribution and
calls its ``register_trackers`` hook. It stays cheap to import: nothing here opens a file or
loads a backend until a run starts.
"""

from trackmux import hookimpl

from .tracker import CsvLogTracker, read_metrics

__all__ = ["CsvLogTracker", "read_metrics"]
__version__ = "0.1.0"


@hookimpl
def register_trackers(register):
    register(CsvLogTracker)
