"""Turning what a training loop logs into what trackers accept: numbers only, namespaced
metric names, flat parameters, secrets redacted. Done once here for every plugin."""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping

logger = logging.getLogger(__name__)

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


def flatten(config: Mapping, separator: str = "/", prefix: str = "") -> dict:
    """Nested mappings become ``parent<separator>child`` keys; lists and tuples become JSON;
    anything else that is not a plain number or string becomes its ``str()``.

    Nothing is dropped silently: an empty mapping is kept as ``"{}"``, a mapping that contains
    itself as ``"<cycle>"``, and two keys that flatten to the same name (``{"a/b": 1, "a":
    {"b": 2}}``) keep the last value with a warning."""
    flat: dict = {}
    _flatten_into(flat, config, separator, prefix, set())
    return flat


def _flatten_into(flat: dict, config: Mapping, separator: str, prefix: str, path: set) -> None:
    path.add(id(config))
    for key, value in config.items():
        name = f"{prefix}{separator}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            if id(value) in path:
                _put(flat, name, "<cycle>")
            else:
                _flatten_into(flat, value, separator, name, path)
        else:
            _put(flat, name, "{}" if isinstance(value, Mapping) else _param_value(value))
    path.discard(id(config))


def _put(flat: dict, name: str, value) -> None:
    if name in flat:
        logger.warning(
            "two params flatten to the same name %r (a key that contains the separator?): "
            "keeping the last value",
            name,
        )
    flat[name] = value


def _param_value(value):
    if value is None or isinstance(value, str | int | float | bool):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return value
    if isinstance(value, list | tuple):
        try:
            return json.dumps(list(value), allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            return str(value)
    number = as_number(value)
    if number is not None:
        return number if math.isfinite(number) else str(number)
    return str(value)


#: environment variables holding the backends' credentials: a value equal to one (or that
#: contains one) is redacted wherever it appears in a config
CREDENTIAL_ENV_VARS = (
    "WANDB_API_KEY",
    "COMET_API_KEY",
    "NEPTUNE_API_TOKEN",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DAGSHUB_USER_TOKEN",
    "CLEARML_API_ACCESS_KEY",
    "CLEARML_API_SECRET_KEY",
    "AZURE_CLIENT_SECRET",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
)
# any other variable named like a credential counts too (GITHUB_TOKEN, MY_SERVICE_API_KEY)
_CREDENTIAL_ENV_NAME = re.compile(r"_(TOKEN|API_?KEY|SECRET|SECRET_KEY|PASSWORD|PASSWD)$", re.I)
#: shorter values are too likely to occur by chance ("true", "1234") to be matched
MIN_SECRET_LENGTH = 6
_SECRET_WORDS = {"token", "secret", "password", "passwd", "credential", "credentials", "apikey"}
# tokenizer settings such as pad_token="<pad>" name a token of the vocabulary, not a secret
_VOCABULARY_TOKENS = {"pad", "eos", "bos", "unk", "sep", "cls", "mask", "start", "end"}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:[a-z_]*token|api[_-]?key|key|secret|password|passwd|sig|signature)=)"
    r"[^&#\s]+",
    re.I,
)


def is_secret_name(key) -> bool:
    """Whether a (possibly flattened) param name says its value is a credential:
    ``hub_token``, ``wandb/api_key``, ``clientSecret``; not ``max_tokens``, ``tokenizer`` or
    ``pad_token``."""
    words = [word.lower() for word in _WORD.findall(str(key))]
    for index, word in enumerate(words):
        if word == "token" and (index == 0 or words[index - 1] not in _VOCABULARY_TOKENS):
            return True
        if word in _SECRET_WORDS - {"token"}:
            return True
        if word == "api" and index + 1 < len(words) and words[index + 1] == "key":
            return True
    return False


def credential_values(environ=None) -> list[str]:
    """The values of the credential environment variables set now, longest first."""
    environ = os.environ if environ is None else environ
    values = set()
    for name, value in environ.items():
        if name in CREDENTIAL_ENV_VARS or _CREDENTIAL_ENV_NAME.search(name):
            value = value.strip()
            if len(value) >= MIN_SECRET_LENGTH:
                values.add(value)
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, secrets=None) -> str:
    """``text`` with credentials hidden: the values of credential environment variables,
    passwords in URLs (``scheme://user:***@host``) and secret query parameters."""
    for secret in credential_values() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text:
        text = _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:" + REDACTED + "@", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(r"\g<name>" + REDACTED, text)
    return text


def redact(params: dict) -> dict:
    """Hide string values whose key names a secret (``hub_token``, ``api_key``, ``password``
    ...), every value that is or contains a credential from the environment
    (:data:`CREDENTIAL_ENV_VARS`, ``*_TOKEN``, ``*_API_KEY``...), and passwords in URLs.
    Numbers are never secrets: ``pad_token_id=0`` stays."""
    secrets = credential_values()
    clean = {}
    for key, value in params.items():
        if isinstance(value, str) and value and is_secret_name(key):
            clean[key] = REDACTED
        elif isinstance(value, str):
            clean[key] = redact_text(value, secrets)
        else:
            clean[key] = value
    return clean


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
