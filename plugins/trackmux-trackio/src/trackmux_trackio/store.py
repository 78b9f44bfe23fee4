"""Which directory trackio's local store is in, for one process.

trackio reads ``TRACKIO_DIR`` once, at import, into module globals (``trackio.utils.TRACKIO_DIR``,
copied by ``from ... import`` into ``trackio.sqlite_storage`` and others, with ``MEDIA_DIR``
and ``ARTIFACTS_DIR`` beside it); no call takes a directory. So a run's directory is chosen by
rebinding those globals in every loaded trackio module while the run is open, and restoring
them when the last run using it closes. One directory at a time per process: a second run
asking for another directory while one is open is refused with a clear error.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from pathlib import Path

_NAMES = ("TRACKIO_DIR", "MEDIA_DIR", "ARTIFACTS_DIR")
_lock = threading.Lock()
_bound: Path | None = None
_users = 0
_original: dict[str, Path] = {}
_current: dict[str, Path] = {}


def _paths(directory: Path) -> dict[str, Path]:
    return {
        "TRACKIO_DIR": directory,
        "MEDIA_DIR": directory / "media",
        "ARTIFACTS_DIR": directory / "artifacts",
    }


def _rebind(old: dict[str, Path], new: dict[str, Path]) -> None:
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "trackio" or name.startswith("trackio.")):
            continue
        for attribute in _NAMES:
            # only the modules that hold trackio's own value: an identity check
            if getattr(module, attribute, None) is old[attribute]:
                setattr(module, attribute, new[attribute])


def acquire(directory: str | Path) -> Path:
    """Point trackio at ``directory`` until the matching :func:`release`."""
    global _bound, _users
    import trackio.utils

    directory = Path(directory).resolve()
    with _lock:
        if _bound is not None and _bound != directory:
            raise RuntimeError(
                f"trackio: a run in {_bound} is open in this process, and trackio keeps one "
                f"store directory per process, so {directory} cannot be used at the same "
                "time; finish that run first or give both the same `dir` (TRACKIO_DIR)"
            )
        if _bound is None:
            current = {name: getattr(trackio.utils, name) for name in _NAMES}
            _original.clear()
            _original.update(current)
            _current.clear()
            _current.update(_paths(directory))
            _rebind(current, _current)
            _bound = directory
        _users += 1
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def release() -> None:
    global _bound, _users
    with _lock:
        if _bound is None:
            return
        _users -= 1
        if _users == 0:
            _rebind(_current, _original)
            _bound = None


@contextlib.contextmanager
def using(directory: str | Path):
    """``with using(path): ...``: trackio's own readers (``trackio.Api``,
    ``SQLiteStorage``) read the store in ``path`` inside the block."""
    bound = acquire(directory)
    try:
        yield bound
    finally:
        release()
