"""Test helpers for trackmux and its plugins: a tiny task, a training runner, and the
conformance suite every tracker plugin subclasses. The pytest fixtures in
:mod:`trackmux.testing.pytest_plugin` reach every test suite through the ``pytest11`` entry
point; attributes here load lazily so that costs nothing (torch loads only when used)."""

import importlib

_LAZY = {
    "RunData": "trackmux.testing.conformance",
    "TrackerConformance": "trackmux.testing.conformance",
    "run_training": "trackmux.testing.conformance",
    "StopAt": "trackmux.testing.conformance",
    "hidden_backend_report": "trackmux.testing.conformance",
    "discovery_report": "trackmux.testing.conformance",
    "jsonl_log": "trackmux.testing.conformance",
    "replace_tracker_identity": "trackmux.testing.conformance",
    "assert_found": "trackmux.testing.plugin_checks",
    "assert_unavailable": "trackmux.testing.plugin_checks",
    "RegressionDataset": "trackmux.testing.toy",
    "TinyRegressor": "trackmux.testing.toy",
    "runnable_blocks": "trackmux.testing.docs",
    "run_page": "trackmux.testing.docs",
    "rest_of_output": "trackmux.testing.processes",
    "run_child": "trackmux.testing.processes",
    "describe_child": "trackmux.testing.processes",
}
__all__ = list(_LAZY)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'trackmux.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
