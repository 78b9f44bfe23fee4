"""The two checks every plugin's own tests make of how trackmux sees it: found through its
entry point with a usable backend, and reported unavailable, with the fix, without one."""

from __future__ import annotations


def assert_found(name: str, *, distribution: str, tracker_class, mode: str):
    """``name`` is discovered through the entry point of ``distribution``, available, maps to
    ``tracker_class`` and reports ``mode`` in the current environment. Returns its
    PluginInfo (from a fresh discovery), for the checks that are the plugin's own."""
    from trackmux.plugins import get_registry

    info = get_registry(refresh=True).get(name)
    assert info.available, info.reason
    assert info.distribution == distribution
    assert info.tracker_class is tracker_class
    assert info.mode() == mode
    return info


def assert_unavailable(name: str, distribution: str, module: str, *, version, reason, fix):
    """With the backend ``distribution`` missing (``version`` None) or installed at
    ``version``, in a fresh process (:func:`~trackmux.testing.hidden_backend_report`): the
    plugin is unavailable, its reason starts with ``reason``, its fix is ``fix``; an explicit
    ``report_to=[name]`` raises with both, ``"all"`` skips it for that reason, and the
    backend ``module`` is never imported. Returns the report."""
    from .conformance import hidden_backend_report

    report = hidden_backend_report(name, distribution, module, version=version)
    assert report["status"] == "unavailable"
    assert report["reason"].startswith(reason), report["reason"]
    assert report["fix"] == fix
    assert report["error"] == (
        f"report_to names '{name}', which is installed but cannot run: {report['reason']}; "
        f"fix: {fix}"
    )
    assert report["skipped"] == report["reason"]
    assert report["imported"] is False
    return report
