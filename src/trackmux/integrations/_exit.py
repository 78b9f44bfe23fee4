"""The safety net of the integrations: a run still open when the interpreter exits (its
framework never said the training ended) is finished then, by one ``atexit`` handler."""

from __future__ import annotations

import atexit
import logging
import sys

logger = logging.getLogger(__name__)

# owners (a callback, a logger) whose run is open; each has ``_close_at_exit(error)``
_open: set = set()
_registered = False


def watch(owner) -> None:
    global _registered
    _open.add(owner)
    if not _registered:
        atexit.register(_close_open_runs)
        _registered = True


def forget(owner) -> None:
    _open.discard(owner)


def _close_open_runs() -> None:
    # an uncaught exception is in sys.last_value by the time atexit handlers run
    error = getattr(sys, "last_value", None)
    for owner in list(_open):
        try:
            owner._close_at_exit(error)
        except Exception:
            logger.exception("%s: closing its run at exit failed", type(owner).__name__)
