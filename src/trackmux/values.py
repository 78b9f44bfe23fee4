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

#: words that make a param name a secret's name, wherever they appear in it (``hub_token``,
#: ``wandb/api_keys/openai``, ``clientSecret``, ``db.passwd``); the string value under such a
#: name is replaced by ``***`` whole. Numbers are never redacted.
SECRET_NAME_WORDS = (
    "token", "tokens", "authtoken", "secret", "secrets", "password", "passwords", "passwd",
    "pwd", "passphrase", "passphrases", "credential", "credentials", "apikey", "apikeys",
    "accesskey", "secretkey", "privatekey", "authorization", "cookie", "cookies", "jwt",
    "bearer", "webhook", "webhooks", "dsn",
)  # fmt: skip
#: ``key``/``keys`` is a secret's name alone (``key``, ``wandb/key``) or after one of these
#: (``api_key``, ``private_key``, ``access_key``, ``secret_key``, ``ssh_key``...)
SECRET_KEY_QUALIFIERS = (
    "api", "private", "access", "secret", "signing", "encryption", "client", "ssh", "master",
    "account", "auth", "license", "service", "shared", "session", "storage", "x",
)  # fmt: skip
# a token of the vocabulary, not a secret: pad_token="<pad>", max_tokens, token_type_ids
_VOCABULARY_TOKENS = {
    "pad", "eos", "bos", "unk", "sep", "cls", "mask", "start", "end", "max", "min", "num",
    "special", "added", "new", "total", "extra", "additional", "input", "output", "prompt",
    "context", "train", "eval", "seen", "per",
}  # fmt: skip
_TOKEN_COUNTS = {"id", "ids", "type", "types", "len", "length", "count", "counts", "limit",
                 "budget", "size", "per", "embedding", "embeddings", "level", "dropout"}  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

#: value patterns redacted wherever they appear in a string (params, identities, URLs that
#: are printed or saved), as ``(description, example)``; each is one regex below
SECRET_VALUE_PATTERNS = (
    ("userinfo in a URI", "scheme://user:***@host, scheme://***@host"),
    ("HTTP Authorization values", "Bearer ***, Basic ***"),
    ("password=/pwd=/secret=/token=/AccountKey= in connection strings", "libpq, ODBC, Azure"),
    ("signed-URL and secret query parameters",
     "X-Amz-Signature, X-Amz-Credential, X-Amz-Security-Token, X-Goog-Signature, sig, "
     "signature, token, access_token, key, api_key, secret, password"),
    ("chat webhook URLs", "hooks.slack.com/services/..., discord.com/api/webhooks/..., "
     "*.webhook.office.com/webhookb2/..."),
    ("well-known token prefixes",
     "ghp_/gho_/ghu_/ghs_/ghr_, github_pat_, glpat-, xoxb-/xoxp-/xoxa-/xoxr-/xoxs-, xapp-, "
     "sk-/sk-proj-/sk-ant-, hf_, AKIA/ASIA (AWS key ids), AIza (Google), npm_, pypi-, "
     "JWTs (eyJ...), PEM private key blocks"),
)  # fmt: skip

_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<info>[^/@\s?#]+)@", re.I)
_AUTH_HEADER = re.compile(
    r"\b(?P<name>(?i:bearer)|Digest(?=\s+\w+=)|Basic(?=\s+\S{12})|Token(?=\s+\S{16}))"
    r"(?P<sep>\s+)[A-Za-z0-9._~+/=:,\"-]{6,}"
)
_PARAM_NAMES = (
    r"[a-z_-]*token|api[_-]?key|apikey|key|[a-z_-]*secret|password|passwd|pwd|pass|sig"
    r"|signature|x-amz-[a-z-]*(?:signature|credential|token)"
    r"|x-goog-[a-z-]*(?:signature|credential)|accountkey|sharedaccesskey"
    r"|sharedaccesssignature|access[_-]?key|private[_-]?key|auth|authorization"
)
_KEY_VALUE_SECRET = re.compile(
    r"(?P<name>(?:^|(?<=[\s?&;,{(]))(?:" + _PARAM_NAMES + r")\s*=\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^&#\s;,'\")}]+)",
    re.I,
)
_WEBHOOK = re.compile(
    r"(?P<base>https?://(?:hooks\.slack\.com/(?:services|workflows|triggers)"
    r"|(?:[a-z0-9-]+\.)?discord(?:app)?\.com/api/webhooks"
    r"|[a-z0-9.-]*webhook\.office\.com/webhookb2|outlook\.office\.com/webhook)/)"
    r"[^\s'\"?#<>]+",
    re.I,
)
_TOKEN_PREFIXES = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|glpat-[A-Za-z0-9_-]{16,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}"
    r"|sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{16,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{30,}|npm_[A-Za-z0-9]{30,}|pypi-[A-Za-z0-9_-]{30,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+"
    r")"
)
_PRIVATE_KEY_BLOCK = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY[A-Z ]*-----.*?(?:-----END [A-Z ]*PRIVATE KEY[A-Z ]*-----|$)",
    re.S,
)


def is_secret_name(key) -> bool:
    """Whether a (possibly flattened) param name says its value is a credential:
    ``hub_token``, ``wandb/api_keys/openai``, ``private_key``, ``clientSecret``, ``pwd``,
    ``key``; not ``max_tokens``, ``tokenizer``, ``pad_token`` or ``sort_key``
    (:data:`SECRET_NAME_WORDS`, :data:`SECRET_KEY_QUALIFIERS`)."""
    words = [word.lower() for word in _WORD.findall(str(key))]
    for index, word in enumerate(words):
        before = words[index - 1] if index else None
        after = words[index + 1] if index + 1 < len(words) else None
        if word in ("token", "tokens"):
            if before in _VOCABULARY_TOKENS or after in _TOKEN_COUNTS:
                continue
            return True
        if word in SECRET_NAME_WORDS:
            return True
        if word in ("key", "keys") and (len(words) == 1 or before in SECRET_KEY_QUALIFIERS):
            return True
    # the last part of a path named ``key`` (``wandb/key``)
    last = re.split(r"[/.:]", str(key))[-1].lower()
    return last in ("key", "keys")


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
    userinfo in URIs (``scheme://user:***@host``), and every pattern of
    :data:`SECRET_VALUE_PATTERNS`. The one redaction function: params, run identities saved in
    checkpoints and state files, and what trackmux prints all go through it."""
    if not isinstance(text, str) or not text:
        return text
    for secret in credential_values() if secrets is None else secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "@" in text:
        text = _URL_USERINFO.sub(_redact_userinfo, text)
    if "=" in text:
        text = _KEY_VALUE_SECRET.sub(r"\g<name>" + REDACTED, text)
    text = _AUTH_HEADER.sub(r"\g<name>\g<sep>" + REDACTED, text)
    text = _WEBHOOK.sub(r"\g<base>" + REDACTED, text)
    text = _TOKEN_PREFIXES.sub(REDACTED, text)
    if "PRIVATE KEY" in text:
        text = _PRIVATE_KEY_BLOCK.sub(REDACTED, text)
    return text


def _redact_userinfo(match: re.Match) -> str:
    user, colon, _password = match["info"].partition(":")
    if colon:  # user:password -> the user stays, it names who, not how
        return f"{match['scheme']}{user}:{REDACTED}@"
    if user == REDACTED:
        return match.group(0)
    return f"{match['scheme']}{REDACTED}@"  # a lone userinfo is often a token


def redact(params: dict) -> dict:
    """Hide string values whose key names a secret (:func:`is_secret_name`), every value that
    is or contains a credential from the environment (:data:`CREDENTIAL_ENV_VARS`,
    ``*_TOKEN``, ``*_API_KEY``...), and the value patterns of :data:`SECRET_VALUE_PATTERNS`.
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


def redact_identity(value):
    """A run identity (or any JSON-able value) with :func:`redact_text` applied to every
    string in it: what checkpoints (``tracker_runs``) and ``sync-state.json`` keep. A tracker
    that needs its store's URI to reconnect uses the currently configured one, never the
    saved (redacted) copy."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact_identity(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_identity(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (:func:`redact_text`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is logging's to report
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
