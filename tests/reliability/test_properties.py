"""Issue 8, scenario 8, property-based: report_to resolution and param flattening hold
for any input hypothesis can think of, not only the examples written down."""

from __future__ import annotations

import json
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trackmux import Tracker
from trackmux.plugins import PluginRegistry
from trackmux.report_to import ReportToError, requested_names, resolve
from trackmux.trackers.jsonl import JsonlTracker
from trackmux.values import flatten, redact

NAMES = ("jsonl", "alpha", "beta_two", "gamma-3")


def quiet(tracker_name):
    class Quiet(Tracker):
        name = tracker_name

        def start(self, run):
            return None

        def log_metrics(self, metrics, step, epoch=None):
            pass

        def finish(self, status):
            pass

    return Quiet


REGISTRY = PluginRegistry()
REGISTRY.add_tracker(JsonlTracker, builtin=True)
for _name in NAMES[1:]:
    REGISTRY.add_tracker(quiet(_name))


def respell(name: str):
    """A name as a user might type it: any case, spaces around."""
    return st.tuples(
        st.sampled_from(["", " ", "  "]), st.sampled_from([name, name.upper(), name.title()])
    ).map(lambda parts: parts[0] + parts[1] + parts[0])


known = st.sampled_from(NAMES).flatmap(respell)
settings.register_profile("trackmux", max_examples=200, deadline=None)
settings.load_profile("trackmux")


@given(st.lists(known, min_size=1, max_size=8))
def test_known_names_resolve_to_each_tracker_once_in_order(spellings):
    chosen = [info.name for info in resolve(spellings, REGISTRY).chosen]
    expected = list(dict.fromkeys(s.strip().lower() for s in spellings))
    assert chosen == expected
    # a comma-separated string means the same as the list
    assert [i.name for i in resolve(",".join(spellings), REGISTRY).chosen] == expected


@given(st.lists(known, max_size=5), st.sampled_from(["all", "ALL", " All "]))
def test_all_anywhere_means_every_tracker(spellings, everything):
    assert requested_names([*spellings, everything]) is None
    assert {i.name for i in resolve([everything, *spellings], REGISTRY).chosen} == set(NAMES)


@given(st.lists(known, min_size=1, max_size=5), st.sampled_from(["none", "None", "NONE"]))
def test_none_with_anything_else_is_refused(spellings, nothing):
    assert requested_names(nothing) == []
    with pytest.raises(ReportToError, match="mixes 'none'"):
        requested_names([*spellings, nothing])


unknown = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-0123456789", min_size=1, max_size=20)


@given(st.lists(known, max_size=3), unknown)
def test_an_unknown_name_is_refused_naming_it(spellings, name):
    if name.lower() in {*NAMES, "all", "none"}:
        return
    with pytest.raises(ReportToError) as error:
        resolve([*spellings, name], REGISTRY)
    assert repr(name) in str(error.value) and "Installed:" in str(error.value)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(anything)
def test_resolve_only_ever_raises_report_to_error(value):
    try:
        resolve(value, REGISTRY)
    except ReportToError as error:
        assert "report_to" in str(error)


# --------------------------------------------------------------------------- flattening

SEPARATOR = "/"
key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_0123456789", min_size=1, max_size=6)
leaf = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.lists(st.integers() | st.floats() | st.text(max_size=5), max_size=4)
    | st.builds(object)
    | st.frozensets(st.integers(), max_size=3)
)
nested = st.recursive(
    st.dictionaries(key, leaf, max_size=4),
    lambda inner: st.dictionaries(key, inner | leaf, max_size=4),
    max_leaves=30,
)


def leaves(config: dict, prefix=()):
    for name, value in config.items():
        path = (*prefix, name)
        if isinstance(value, dict) and value:
            yield from leaves(value, path)
        else:
            yield SEPARATOR.join(path), value


@given(nested)
def test_flatten_keeps_every_leaf_once_under_its_path(config):
    flat = flatten(config, SEPARATOR)
    expected = dict(leaves(config))
    assert list(flat) == list(expected)  # nothing lost, nothing invented, in order
    for name, value in flat.items():
        original = expected[name]
        assert value is None or type(value) in (str, int, float, bool)
        if isinstance(original, float) and not math.isfinite(original):
            assert value == str(original)
        elif original is None or type(original) in (str, int, float, bool):
            assert value == original
        elif isinstance(original, list):
            assert isinstance(value, str)
    # whatever went in, what comes out can be written to a run log
    json.dumps(flat, allow_nan=False)


@given(nested, st.sampled_from([".", "/", "::"]))
def test_flatten_joins_with_the_tracker_separator(config, separator):
    paths = [name.split(SEPARATOR) for name, _ in leaves(config)]
    assert list(flatten(config, separator)) == [separator.join(path) for path in paths]


@given(st.dictionaries(key, leaf, min_size=1, max_size=4), key)
def test_keys_that_collide_keep_the_last_value_and_say_so(inner, name):
    messages = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("trackmux.values")
    logger.addHandler(handler)
    try:
        flat = flatten({**{f"{name}/{k}": "first" for k in inner}, name: inner})
    finally:
        logger.removeHandler(handler)
    assert list(flat) == [f"{name}/{k}" for k in inner]
    assert "first" not in flat.values() or "first" in inner.values()
    assert sum("flatten to the same name" in m for m in messages) == len(inner)


@given(nested)
def test_redaction_keeps_every_key_and_every_number(config):
    flat = flatten(config)
    clean = redact(flat)
    assert list(clean) == list(flat)
    for name, value in flat.items():
        if not isinstance(value, str):
            assert clean[name] == value or (value != value and clean[name] != clean[name])
