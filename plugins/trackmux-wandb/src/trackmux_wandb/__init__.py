"""trackmux plugin for Weights & Biases (``report_to="wandb"``).

Importing this module costs nothing: wandb (about 1 s to import) loads when a run starts.
"""

from trackmux import hookimpl


@hookimpl
def register_trackers(register):
    from .tracker import WandbTracker

    register(WandbTracker)
