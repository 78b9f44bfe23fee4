"""The built-in jsonl tracker passes the same conformance suite as every plugin.

The tracker under test is a second jsonl log (own name, own directory) next to the
reference log every conformance run writes."""

from trackmux.runlog import read_run
from trackmux.testing import RunData, TrackerConformance
from trackmux.trackers.jsonl import JsonlTracker


class SecondJsonl(JsonlTracker):
    name = "jsonl-copy"


class TestJsonlConformance(TrackerConformance):
    tracker_class = SecondJsonl
    purges_after_resume = True  # read_run drops what followed the resumed checkpoint

    def make_tracker(self, tmp_path):
        return SecondJsonl(dir=str(tmp_path / "second-log"))

    def read_back(self, tracker, tmp_path):
        directories = sorted((tmp_path / "second-log").iterdir())
        run = read_run(directories[-1])
        metrics = dict(run.metrics)
        metrics.update({name: [(None, value)] for name, value in run.summary.items()})
        return RunData(params=run.config, metrics=metrics, status=run.status, runs=len(directories))
