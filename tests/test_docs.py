"""The documentation stays true to the code: every hook documented with its current arguments,
every event in the callback guide, every TrainingArguments field in the reference, and the
getting-started examples actually run."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import re
from pathlib import Path

import pytest

from trackmux import _hookdocs, hf_fields
from trackmux.testing.docs import run_page, runnable_blocks
from trackmux.trainer_callback import EVENTS, TrainerCallback
from trackmux.training_args import TrainingArguments

DOCS = Path(__file__).resolve().parent.parent / "docs"
HOOKSPECS = _hookdocs.hookspec_functions()
EVENT_SPECS = [spec for spec in HOOKSPECS if _hookdocs.is_training_event(spec)]
#: hooks of plugin discovery, which callbacks have no use for
DISCOVERY_HOOKS = {"register_trackers"}


def _read(relative: str) -> str:
    return (DOCS / relative).read_text(encoding="utf-8")


@pytest.mark.parametrize("spec", HOOKSPECS, ids=lambda spec: spec.__name__)
def test_every_hookspec_has_a_docstring(spec):
    assert inspect.getdoc(spec), (
        f"hookspec {spec.__name__} in trackmux/hookspecs.py has no docstring"
    )


def test_hook_reference_is_generated_from_the_hookspecs():
    current = _read("reference/hooks.md")
    expected = _hookdocs.render()
    diff = "".join(
        difflib.unified_diff(
            current.splitlines(True),
            expected.splitlines(True),
            "docs/reference/hooks.md",
            "render()",
            n=1,
        )
    )
    assert current == expected, (
        f"docs/reference/hooks.md is stale; regenerate it: {_hookdocs.REGENERATE}\n{diff}"
    )


def test_hookdocs_check_flags_a_stale_page(tmp_path, capsys):
    page = tmp_path / "hooks.md"
    page.write_text(_hookdocs.render(), encoding="utf-8")
    assert _hookdocs.main(["--check", str(page)]) == 0
    page.write_text(_hookdocs.render().replace("on_save", "on_saved", 1), encoding="utf-8")
    assert _hookdocs.main(["--check", str(page)]) == 1
    assert _hookdocs.REGENERATE in capsys.readouterr().err


def test_hook_reference_converts_the_docstring_markup():
    page = _hookdocs.render()
    assert not re.search(r"(?<!`)``(?!`)", page), "an RST ``literal`` was left in the page"
    assert ":func:" not in page and ":class:" not in page
    assert "[`on_exception`](#on_exception)" in page  # cross-references become links
    for spec in HOOKSPECS:
        assert f"### {spec.__name__}\n" in page
        assert f"{', '.join(_hookdocs.arguments(spec))}" in page.replace("\n    ", " ")


def _event_table() -> dict[str, str]:
    """Event name -> its "extra kwargs" cell, from the events table of docs/callbacks.md."""
    text = _read("callbacks.md")
    header = re.search(r"^\| *Event *\| *When *\| *Extra kwargs *\|$", text, re.M)
    assert header, "docs/callbacks.md has no table with the columns | Event | When | Extra kwargs |"
    rows = {}
    for line in text[header.end() :].lstrip("\n").splitlines()[1:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        name = re.fullmatch(r"`(\w+)`", cells[0])
        assert name, f"docs/callbacks.md event table: first cell {cells[0]!r} is not `an_event`"
        rows[name.group(1)] = cells[2]
    return rows


def test_callback_guide_lists_every_event():
    documented = set(_event_table())
    expected = set(EVENTS) | {spec.__name__ for spec in EVENT_SPECS}
    assert not expected - documented, (
        f"events missing from the table in docs/callbacks.md: {sorted(expected - documented)}"
    )
    assert not documented - expected, (
        f"docs/callbacks.md documents events that do not exist: {sorted(documented - expected)}"
    )


def test_callback_guide_lists_each_events_extra_kwargs():
    table = _event_table()
    for spec in EVENT_SPECS:
        if spec.__name__ not in table:
            continue  # reported by test_callback_guide_lists_every_event
        listed = set(re.findall(r"`(\w+)`", table[spec.__name__]))
        extra = set(_hookdocs.extra_arguments(spec))
        assert listed == extra, (
            f"docs/callbacks.md: {spec.__name__} receives the extra kwargs {sorted(extra)} "
            f"(hookspecs.py), the table says {sorted(listed)}"
        )


def test_callback_methods_are_the_hookspecs():
    methods = {
        name
        for name, member in vars(TrainerCallback).items()
        if name.startswith("on_") and callable(member)
    }
    hooks = {spec.__name__ for spec in HOOKSPECS} - DISCOVERY_HOOKS
    assert not methods - hooks, f"TrainerCallback methods without a hookspec: {methods - hooks}"
    assert not hooks - methods, f"hookspecs without a TrainerCallback method: {hooks - methods}"
    assert set(EVENTS) == hooks, f"trainer_callback.EVENTS differs: {set(EVENTS) ^ hooks}"


def test_every_training_argument_is_documented():
    """Each field is described in the reference page, or (transformers' other fields) in the
    migration page's generated table, which lists every field with its status."""
    text = _read("reference/training-arguments.md") + _read("migrating-from-transformers.md")
    missing = [
        field.name
        for field in dataclasses.fields(TrainingArguments)
        if f"`{field.name}`" not in text
    ]
    assert not missing, f"the docs do not document {missing}"


def test_migration_page_lists_every_field_with_its_status():
    page = _read("migrating-from-transformers.md")
    assert hf_fields.updated_page(page) == page, (
        "docs/migrating-from-transformers.md: the field table is stale; regenerate it: "
        "python -m trackmux.hf_fields --write"
    )
    table = page.split(hf_fields.BEGIN)[1].split(hf_fields.END)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    fields = [field.name for field in dataclasses.fields(TrainingArguments)]
    assert [row.split("`")[1] for row in rows] == fields
    statuses = {hf_fields.SAME, hf_fields.TRACKMUX, hf_fields.REFUSED, hf_fields.NO_EFFECT}
    for row in rows:
        assert row.split("|")[3].strip() in statuses, row
    for name, status in hf_fields.FIELDS.items():
        if status.status in (hf_fields.REFUSED, hf_fields.NO_EFFECT):
            assert status.note, f"{name} is {status.status} without saying why"


def test_getting_started_examples_run(trackmux_env, caplog):
    """The marked blocks run in order in one namespace, as a reader would paste them into
    one session (a later block uses the trainer of an earlier one)."""
    blocks = runnable_blocks(_read("getting-started.md"))
    assert len(blocks) >= 5, "the getting-started examples lost their runnable marks"
    caplog.set_level(logging.INFO, logger="trackmux")
    namespace: dict = {"__name__": "getting_started"}
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"docs/getting-started.md (runnable block {number})", "exec")
        exec(code, namespace)  # noqa: S102 - our own documentation
    assert namespace["result"].global_step == 60
    assert (trackmux_env / "out" / "runs" / "first" / "events.jsonl").is_file()
    assert any(r.getMessage().startswith("trackmux: reporting to jsonl") for r in caplog.records)


def test_the_plain_loop_page_runs(trackmux_env, capsys):
    namespace = run_page(DOCS / "plain-loops.md")
    assert namespace["run"].status == "success"
    log = namespace["trackmux"].read_run(trackmux_env / "out" / "runs" / "plain")
    assert [step for step, _ in log.history("train/loss")] == list(range(20))
    assert "success" in capsys.readouterr().out
