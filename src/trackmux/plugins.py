"""Finding tracker plugins: entry points of the group ``trackmux``, loaded one by one.

A plugin module is cheap to import. It implements the ``register_trackers`` hook and
registers its ``Tracker`` subclass; the backend it needs is checked here against installed
distribution metadata and ``importlib.util.find_spec``, never imported. A plugin whose
backend is missing is listed as unavailable with the pip line that fixes it; one whose
module fails to import is listed as broken with its error, and the others still load.

``TRACKMUX_DISABLE_PLUGIN_AUTOLOAD=1`` loads no entry points; ``TRACKMUX_PLUGINS=a,b`` loads
only those.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass

import pluggy

from . import hookspecs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "trackmux"
AVAILABLE = "available"
UNAVAILABLE = "unavailable"
BROKEN = "broken"


@dataclass
class PluginInfo:
    """One tracker plugin as ``trackmux plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    status: str
    tracker_class: type | None = None
    reason: str | None = None
    fix: str | None = None
    backend: str | None = None
    backend_version: str | None = None
    builtin: bool = False

    @property
    def available(self) -> bool:
        return self.status == AVAILABLE

    def mode(self) -> str | None:
        if not self.available:
            return None
        try:
            return self.tracker_class.mode()
        except Exception as error:  # a plugin's own check must not break the listing
            return f"unknown ({error})"

    def as_dict(self) -> dict:
        """What ``trackmux plugins`` shows; credentials (a password in a tracking URI a
        plugin's mode or error mentions, a token from the environment) are hidden."""
        from .values import redact_text

        row = self._fields()
        return {k: redact_text(v) if isinstance(v, str) else v for k, v in row.items()}

    def _fields(self) -> dict:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "status": self.status,
            "reason": self.reason,
            "fix": self.fix,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "mode": self.mode(),
            "builtin": self.builtin,
        }


def check_backend(tracker_class) -> tuple[str | None, str | None]:
    """``(reason, installed version)``: reason is None when every requirement of
    ``tracker_class.requires`` is installed at a supported version and importable."""
    if not tracker_class.requires and not tracker_class.backend_modules:
        return None, None
    from packaging.requirements import Requirement  # ~10 ms: only when there is a backend

    versions = []
    for text in tracker_class.requires:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            return f"backend missing: {requirement.name} is not installed", None
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            return (
                f"unsupported backend: {requirement.name} {version} is installed, "
                f"{text} is supported",
                version,
            )
        versions.append(version)
    modules = tracker_class.backend_modules or tuple(
        Requirement(text).name.replace("-", "_") for text in tracker_class.requires
    )
    for module in modules:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"backend missing: module {module!r} cannot be imported", None
    return None, ", ".join(versions) or None


def distribution_name(name: str) -> str:
    """The distribution of the tracker called ``name``, by the one naming rule
    (docs/plugins/index.md#names): ``"trackmux-"`` + the name with ``_`` as ``-``
    (``comet_ml`` -> ``trackmux-comet-ml``). In a clone it lives in ``plugins/<distribution>/``
    and the core's extra for it is the part after ``trackmux-`` (``trackmux[comet-ml]``)."""
    return "trackmux-" + name.strip().lower().replace("_", "-")


def install_hints(names) -> list[tuple[str, str]]:
    """``(where, command)`` pairs that install the plugins of the tracker ``names``: what
    works now (from a clone, from a wheelhouse that ``nox -s wheelhouse`` builds) and what
    works once trackmux is published."""
    distributions = [distribution_name(name) for name in names]
    folders = " ".join(f"-e plugins/{distribution}" for distribution in distributions)
    wanted = " ".join(distributions)
    return [
        ("from a clone", f"pip install {folders}"),
        ("from a wheelhouse", f"pip install --find-links WHEELHOUSE {wanted}"),
        ("once published", f"pip install {wanted}"),
    ]


def install_hint(names) -> str:
    """:func:`install_hints` on one line."""
    return "; ".join(f"{where}: {command}" for where, command in install_hints(names))


def pip_line(tracker_class) -> str:
    requirements = " ".join(f'"{text}"' for text in tracker_class.requires)
    return f"pip install {requirements}" if requirements else ""


class PluginRegistry:
    """Every known tracker plugin by its ``report_to`` name."""

    def __init__(self):
        self.plugins: dict[str, PluginInfo] = {}
        self.manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.manager.add_hookspecs(hookspecs)

    def add_tracker(
        self, tracker_class, *, name=None, distribution=None, version=None, builtin=False
    ):
        name = name or tracker_class.name
        reason, backend_version = check_backend(tracker_class)
        self.plugins[name] = PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            status=AVAILABLE if reason is None else UNAVAILABLE,
            tracker_class=tracker_class,
            reason=reason,
            fix=None if reason is None else pip_line(tracker_class),
            backend=", ".join(tracker_class.requires) or None,
            backend_version=backend_version,
            builtin=builtin,
        )

    def load_entry_point(self, entry_point) -> None:
        distribution = getattr(entry_point.dist, "name", None)
        version = getattr(entry_point.dist, "version", None)
        try:
            module = entry_point.load()
            self.manager.register(module, name=f"{ENTRY_POINT_GROUP}.{entry_point.name}")
            found = []
            for impl in self.manager.hook.register_trackers.get_hookimpls():
                if impl.plugin is module:
                    impl.function(*[found.append for _ in impl.argnames])
            if not found:
                raise LookupError(
                    f"module {entry_point.value!r} registered no tracker: it must implement "
                    "the register_trackers(register) hook"
                )
        except Exception as error:
            logger.debug("trackmux plugin %r failed to load", entry_point.name, exc_info=True)
            self.plugins[entry_point.name] = PluginInfo(
                name=entry_point.name,
                distribution=distribution,
                version=version,
                status=BROKEN,
                reason=f"broken: {type(error).__name__}: {error}",
                fix=f"pip install --force-reinstall {distribution}" if distribution else None,
            )
            return
        for tracker_class in found:
            name = entry_point.name if len(found) == 1 else tracker_class.name
            self.add_tracker(tracker_class, name=name, distribution=distribution, version=version)

    def get(self, name: str) -> PluginInfo | None:
        return self.plugins.get(name)

    def available(self) -> list[PluginInfo]:
        return [info for info in self.plugins.values() if info.available]


_registry: PluginRegistry | None = None


def autoload_disabled() -> bool:
    return os.environ.get("TRACKMUX_DISABLE_PLUGIN_AUTOLOAD", "").strip().lower() in {
        "1",
        "true",
        "yes",
        "on",
    }


def get_registry(refresh: bool = False) -> PluginRegistry:
    """The process-wide registry, loaded on first use (never at ``import trackmux``)."""
    global _registry
    if _registry is None or refresh:
        _registry = _load()
    return _registry


def _load() -> PluginRegistry:
    from .trackers.jsonl import JsonlTracker

    registry = PluginRegistry()
    registry.add_tracker(
        JsonlTracker, distribution="trackmux", version=_own_version(), builtin=True
    )
    if autoload_disabled():
        return registry
    only = {n.strip() for n in os.environ.get("TRACKMUX_PLUGINS", "").split(",") if n.strip()}
    for entry_point in sorted(
        importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name
    ):
        if only and entry_point.name not in only:
            continue
        if entry_point.name in registry.plugins:
            logger.warning(
                "two plugins claim the name %r; keeping the first (%s)",
                entry_point.name,
                registry.plugins[entry_point.name].distribution,
            )
            continue
        registry.load_entry_point(entry_point)
    return registry


def _own_version() -> str | None:
    try:
        return importlib.metadata.version("trackmux")
    except importlib.metadata.PackageNotFoundError:
        return None
