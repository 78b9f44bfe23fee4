"""Issue 15, rows 5 and 6: no metric overwrites another in a backend.

Two names that a tracker's sanitize_name or length limits map to one backend name are kept
apart deterministically, with one warning naming both; over-long names are shortened with a
stable hash suffix (per "/" part in UTF-8 bytes where a backend writes one file per metric).
"""

from __future__ import annotations

import logging

from trackmux import Tracker
from trackmux.run import Run


class Merging(Tracker):
    """Drops empty "/" parts and replaces anything but ASCII word characters and "/"."""

    name = "merging"
    max_name_length = 60

    def sanitize_name(self, name):
        clean = "".join(c if (c.isascii() and (c.isalnum() or c in "_/")) else "_" for c in name)
        return "/".join(part for part in clean.split("/") if part) or "_"


class Files(Tracker):
    """One file per metric: 40 bytes per path component."""

    name = "files"
    max_name_part_bytes = 40


def names_for(tracker, *records):
    run = Run([tracker], name="t")
    return run, [run._names_for(tracker, record) for record in records]


def collisions(caplog):
    return [r.getMessage() for r in caplog.records if "both map to" in r.getMessage()]


def test_merged_names_are_kept_apart_with_one_warning_naming_both(caplog):
    tracker = Merging()
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        run, (first, second) = names_for(
            tracker,
            {"acc//top1": 1.0, "acc/top1": 2.0, "loss \U0001f525": 3.0, "loss \U0001f680": 4.0},
            {"acc//top1": 5.0, "acc/top1": 6.0, "loss \U0001f525": 7.0, "loss \U0001f680": 8.0},
        )
    assert len(first) == 4 and sorted(first.values()) == [1.0, 2.0, 3.0, 4.0]
    # the name the backend accepts unchanged keeps it, whatever the order of the dict
    assert first["acc/top1"] == 2.0
    assert first["loss__"] == 3.0  # both changed: the first logged keeps the plain form
    assert list(second) == list(first)  # cached: the same names at every step
    warnings = collisions(caplog)
    assert len(warnings) == 2  # once per pair, not once per step
    assert "'acc/top1'" in warnings[0] and "'acc//top1'" in warnings[0]
    assert "'loss \U0001f525'" in warnings[1] and "'loss \U0001f680'" in warnings[1]
    mapped = run.metric_names("merging")
    assert mapped["acc//top1"] == "acc/top1_" + mapped["acc//top1"][-8:]
    assert mapped["acc//top1"] in first and "acc/top1" not in mapped


def test_the_mapping_is_the_same_in_a_new_run_and_in_any_dict_order():
    record = {"acc//top1": 1.0, "acc/top1": 2.0, "x" * 300: 3.0, "x" * 299 + "y": 4.0}
    _, (one,) = names_for(Merging(), record)
    _, (two,) = names_for(Merging(), dict(reversed(record.items())))
    assert {v: k for k, v in one.items()} == {v: k for k, v in two.items()}
    assert len(one) == 4


def test_long_names_get_a_stable_hash_suffix_and_stay_apart(caplog):
    tracker = Merging()
    long_a, long_b = "m" * 300, "m" * 299 + "n"
    with caplog.at_level(logging.WARNING, logger="trackmux"):
        run, (renamed,) = names_for(tracker, {long_a: 1.0, long_b: 2.0})
    names = run.metric_names("merging")
    assert names[long_a] != names[long_b]
    assert all(len(name) == 60 for name in renamed)
    assert names[long_a][:51] == "m" * 51 and names[long_a][51] == "_"
    assert sum("too long" in r.getMessage() for r in caplog.records) == 2
    assert not collisions(caplog)


def test_a_path_component_over_the_byte_limit_is_shortened_in_utf8():
    tracker = Files()
    name = "eval/" + "\u00e9" * 30 + "/x"  # 60 bytes in the middle part
    run, (renamed,) = names_for(tracker, {name: 1.0, "short/name": 2.0})
    stored = run.metric_names("files")[name]
    assert all(len(part.encode()) <= 40 for part in stored.split("/"))
    assert stored.startswith("eval/") and "short/name" in renamed


def test_trackers_without_rules_get_the_dict_unchanged():
    record = {"a//b": 1.0, "x" * 300: 2.0}
    tracker = type("Plain", (Tracker,), {"name": "plain"})()
    _, (same,) = names_for(tracker, record)
    assert same is record
