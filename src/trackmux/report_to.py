"""Resolving ``TrainingArguments.report_to`` into the trackers of a run, when training starts
(so ``args.report_to = "none"`` after construction is honoured)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from .plugins import PluginRegistry, autoload_disabled, distribution_name, install_hint

#: the names users know from Hugging Face, each the plugin distribution that
#: :func:`~trackmux.plugins.distribution_name` names
KNOWN_TRACKERS = (
    "tensorboard",
    "wandb",
    "mlflow",
    "comet_ml",
    "neptune",
    "clearml",
    "dvclive",
    "codecarbon",
    "azure_ml",
    "dagshub",
    "flyte",
    "trackio",
    "swanlab",
    "aim",
)


#: the core's local run log, kept on every run unless ``run_journal=False``
JOURNAL = "jsonl"


class ReportToError(ValueError):
    """``report_to`` names a tracker that cannot run; raised before any training."""


@dataclass
class Selection:
    chosen: list = field(default_factory=list)  # PluginInfo, in report_to order
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, why)

    def summary(self, explicit=()) -> str:
        names = [info.name for info in self.chosen] + [t.name for t in explicit]
        line = "trackmux: reporting to " + (", ".join(names) if names else "no tracker")
        if self.skipped:
            line += "; skipped " + "; ".join(f"{name} ({why})" for name, why in self.skipped)
        return line


def requested_names(report_to) -> list[str] | None:
    """The names ``report_to`` asks for, stripped and deduplicated in order; None means
    "all". ``"all"`` and ``"none"`` are keywords in any case; empty entries (``"wandb,"``)
    are ignored, but a report_to with nothing else in it is refused."""
    if report_to is None:
        return []
    if isinstance(report_to, str):
        report_to = report_to.split(",")
    elif not isinstance(report_to, list | tuple):
        raise ReportToError(
            f"TrainingArguments.report_to={report_to!r} must be 'all', 'none', None, a tracker "
            "name or a list of names"
        )
    names: list[str] = []
    for item in report_to:
        if not isinstance(item, str):
            raise ReportToError(
                f"TrainingArguments.report_to contains {item!r} ({type(item).__name__}); every "
                "entry must be a string"
            )
        name = item.strip()
        if name.lower() in ("all", "none"):
            name = name.lower()
        if name and name not in names:
            names.append(name)
    if not names and report_to:
        raise ReportToError(
            f"TrainingArguments.report_to={report_to!r} names no tracker; use 'none' (or []) to "
            "report nowhere, 'all' for every installed tracker, or tracker names"
        )
    if "none" in names:
        if len(names) > 1:
            raise ReportToError(
                f"TrainingArguments.report_to={report_to!r} mixes 'none' with tracker names; "
                "use 'none' alone to report nowhere, or list only the trackers you want"
            )
        return []
    if "all" in names:  # "all" already includes whatever else is listed
        return None
    return names


def lookup(registry: PluginRegistry, name: str):
    """The plugin called ``name``; a different case matches when it is unambiguous
    (``"MLflow"`` is ``mlflow``)."""
    info = registry.get(name)
    if info is not None:
        return info
    matches = [key for key in registry.plugins if key.lower() == name.lower()]
    return registry.get(matches[0]) if len(matches) == 1 else None


def resolve(
    report_to, registry: PluginRegistry, explicit_names=(), *, journal: bool | None = None
) -> Selection:
    """Pick the trackers ``report_to`` asks for. ``explicit_names`` are trackers the user
    passed as objects: they are used as given and not looked up.

    ``journal`` is the run journal rule (docs/report-to.md, "The run journal"): True adds the
    local ``jsonl`` log whatever ``report_to`` says, "none" included; False leaves it out
    (and refuses a ``report_to`` that names it); None resolves ``report_to`` alone."""
    selection = _resolve(report_to, registry, explicit_names)
    if journal is None or JOURNAL in explicit_names:
        return selection
    chosen = any(info.name == JOURNAL for info in selection.chosen)
    if journal and not chosen:
        selection.chosen.insert(0, registry.get(JOURNAL))
    elif not journal and chosen:
        named = requested_names(report_to)
        if named is not None and any(name.lower() == JOURNAL for name in named):
            raise ReportToError(
                f"report_to={report_to!r} names {JOURNAL!r}, the run journal, but run_journal "
                "is False; drop one of the two (run_journal=False turns the journal off)"
            )
        selection.chosen = [info for info in selection.chosen if info.name != JOURNAL]
    return selection


def _resolve(report_to, registry: PluginRegistry, explicit_names=()) -> Selection:
    names = requested_names(report_to)
    selection = Selection()
    if names is None:
        for info in registry.plugins.values():
            if info.name in explicit_names:
                continue
            if not info.available:
                selection.skipped.append((info.name, info.reason))
                continue
            unconfigured = info.tracker_class.unconfigured_reason()
            if unconfigured:
                selection.skipped.append((info.name, f"not configured: {unconfigured}"))
                continue
            selection.chosen.append(info)
        missing = [n for n in KNOWN_TRACKERS if n not in registry.plugins]
        if autoload_disabled():
            selection.skipped.append(
                ("plugins", "not loaded: TRACKMUX_DISABLE_PLUGIN_AUTOLOAD is set")
            )
        elif missing:
            selection.skipped.append(
                (", ".join(missing), "not installed; `trackmux plugins` says how to install them")
            )
        return selection
    for name in names:
        if name in explicit_names:
            continue
        info = lookup(registry, name)
        if info is None:
            raise ReportToError(_unknown_name_message(name, registry))
        if info.name in explicit_names or any(c.name == info.name for c in selection.chosen):
            continue
        if not info.available:
            fix = f"; fix: {info.fix}" if info.fix else ""
            raise ReportToError(
                f"report_to names {name!r}, which is installed but cannot run: {info.reason}{fix}"
            )
        selection.chosen.append(info)
    return selection


def _unknown_name_message(name: str, registry: PluginRegistry) -> str:
    installed = sorted(registry.plugins)
    known = [known for known in KNOWN_TRACKERS if known.lower() == name.lower()]
    if known and not autoload_disabled():
        return (
            f"report_to names {name!r}, a trackmux plugin that is not installed; install "
            f"{distribution_name(known[0])}: {install_hint(known)}. "
            f"Installed: {', '.join(installed) or 'none'}."
        )
    candidates = sorted(set(installed) | set(KNOWN_TRACKERS))
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    if autoload_disabled():
        hint += (
            " Plugins were not loaded because TRACKMUX_DISABLE_PLUGIN_AUTOLOAD is set; pass "
            "tracker objects with Trainer(trackers=[...]) or unset it."
        )
    elif not close:
        # never a guessed distribution name: a third-party plugin says how to install itself
        hint += " No trackmux plugin has that name; a third-party plugin is installed as its own documentation says."
    return (
        f"report_to names {name!r}, which is not an installed tracker.{hint} "
        f"Installed: {', '.join(installed) or 'none'}. trackmux's plugins: "
        f"{', '.join(KNOWN_TRACKERS)} (`trackmux plugins` says how to install them)."
    )
