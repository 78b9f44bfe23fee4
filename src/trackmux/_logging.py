"""trackmux's log output: INFO lines of the ``trackmux`` logger go to stderr unless the
application configured logging itself. ``TRACKMUX_VERBOSITY`` (debug, info, warning, error)
changes the level."""

from __future__ import annotations

import logging
import os

from .values import RedactingFilter

_configured = False


def ensure_default_handler() -> None:
    global _configured
    if _configured:
        return
    _configured = True
    library = logging.getLogger("trackmux")
    level = os.environ.get("TRACKMUX_VERBOSITY", "info").upper()
    library.setLevel(getattr(logging, level, logging.INFO))
    if library.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    # no credential printed: a URI's userinfo, a token in an error message (values.redact_text)
    handler.addFilter(RedactingFilter())
    library.addHandler(handler)
    library.propagate = False
