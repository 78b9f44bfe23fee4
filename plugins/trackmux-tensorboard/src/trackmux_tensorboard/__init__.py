"""trackmux plugin for TensorBoard (``report_to="tensorboard"``).

Importing this module costs nothing: TensorBoard and torch load when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import TensorBoardTracker

    register(TensorBoardTracker)
