"""Turning what a training loop logs into what trackers accept: numbers only, namespaced
metric names, flat parameters, secrets redacted. Done once here for every plugin."""

from __future__ import annotations

import json
import logging
import math
import re

logger = logging.getLogger(__name__)

_SECRET_KEY = re.compile(r"(token|api[_-]?key|secret|password|passwd|credential)", re.I)
_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):[^@/\s]+@", re.I
)
REDACTED = "***"


def as_number(value):
    """``value`` as an int or float when it is a number, a 0-d tensor or a numpy scalar;
    ``None`` for anything else (strings, lists, multi-element tensors)."""
    kind = type(value)
    if kind is float or kind is int:
        return value
    if kind is bool:
        return int(value)
    if isinstance(value, int | float):
        return int(value) if isinstance(value, bool) else value
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", None) == 0:
        try:
            number = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        if isinstance(number, bool):
            return int(number)
        return number if isinstance(number, int | float) else None
    return None


class MetricFilter:
    """Keeps the numeric values of a log dict; warns once per key about the others."""

    def __init__(self, owner: str = "trackmux"):
        self.owner = owner
        self._warned: set[str] = set()
        self._names: dict[str, str] = {}

    def numeric(self, logs: dict, skip=("epoch",)) -> dict:
        metrics = {}
        for key, value in logs.items():
            if key in skip:
                continue
            number = as_number(value)
            if number is None:
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning(
                        "%s: not logging %r to trackers: its value %r is not a number "
                        "(only numbers, 0-d tensors and numpy scalars are tracked)",
                        self.owner,
                        key,
                        _short(value),
                    )
                continue
            metrics[self.namespaced(key)] = number
        return metrics

    def namespaced(self, key: str) -> str:
        """``eval_loss`` -> ``eval/loss``, ``test_acc`` -> ``test/acc``, ``loss`` ->
        ``train/loss``: the one naming every tracker receives (Hugging Face's rewrite)."""
        name = self._names.get(key)
        if name is None:
            for prefix in ("eval", "test"):
                if key.startswith(prefix + "_"):
                    name = f"{prefix}/{key[len(prefix) + 1 :]}"
                    break
            else:
                name = key if "/" in key else f"train/{key}"
            self._names[key] = name
        return name


def flatten(config: dict, separator: str = "/", prefix: str = "") -> dict:
    """Nested dicts become ``parent<separator>child`` keys; lists and tuples become JSON."""
    flat: dict = {}
    for key, value in config.items():
        name = f"{prefix}{separator}{key}" if prefix else str(key)
        if isinstance(value, dict):
            flat.update(flatten(value, separator, name))
        else:
            flat[name] = _param_value(value)
    return flat


def _param_value(value):
    if value is None or isinstance(value, str | int | float | bool):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if isinstance(value, list | tuple):
        try:
            return json.dumps(list(value))
        except (TypeError, ValueError):
            return str(value)
    number = as_number(value)
    return number if number is not None else str(value)


def redact(params: dict) -> dict:
    """Hide values whose key names a secret, and passwords inside URLs."""
    clean = {}
    for key, value in params.items():
        if value not in (None, "") and _SECRET_KEY.search(str(key)):
            clean[key] = REDACTED
        elif isinstance(value, str) and "@" in value:
            clean[key] = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:" + REDACTED + "@", value)
        else:
            clean[key] = value
    return clean


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
