"""trackmux plugin for CodeCarbon (``report_to="codecarbon"``): energy and emissions of training.

Importing this module costs nothing: codecarbon loads when a training run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import CodeCarbonTracker

    register(CodeCarbonTracker)
