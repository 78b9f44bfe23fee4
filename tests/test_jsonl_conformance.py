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

    def make_tracker(self, tmp_path):
        return SecondJsonl(dir=str(tmp_path / "second-log"))

    def read_back(self, tracker, tmp_path):
        directories = sorted((tmp_path / "second-log").iterdir())
        run = read_run(directories[-1])
        return RunData(
            params=run.config, metrics=run.metrics, status=run.status, runs=len(directories)
        )
