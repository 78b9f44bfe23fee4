"""Child processes in tests: run one so that a failure shows what the child printed, and read
what an interrupted child writes.

A test that only says ``CalledProcessError ... exit status 1`` sends whoever reads CI's log
off to rerun it by hand; every test that starts a process goes through :func:`run_child` (or
puts :func:`describe_child` in its assertion message), so the failure names its cause.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
from collections.abc import Sequence

#: how much of each stream a failure message shows (the end, where the traceback is)
TAIL_CHARS = 6000


def _tail(text: str | bytes | None, limit: int) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters before ...]\n{text[-limit:]}"


def describe_child(
    process: subprocess.CompletedProcess | subprocess.Popen | subprocess.SubprocessError,
    stdout: str | bytes | None = None,
    stderr: str | bytes | None = None,
    *,
    limit: int = TAIL_CHARS,
) -> str:
    """The command, its exit status and the tail of its stdout and stderr, for an assertion
    message: ``assert result.returncode == 0, describe_child(result)``.

    ``stdout``/``stderr`` default to what ``process`` captured (a ``CompletedProcess``, a
    ``CalledProcessError`` or ``TimeoutExpired``); pass them for a ``Popen`` whose output was
    read separately (e.g. by :func:`rest_of_output`).
    """
    if stdout is None:
        stdout = getattr(process, "stdout", None) if not _is_pipe(process, "stdout") else None
    if stderr is None:
        stderr = getattr(process, "stderr", None) if not _is_pipe(process, "stderr") else None
    args = getattr(process, "args", None) or getattr(process, "cmd", None)
    command = shlex.join(map(str, args)) if isinstance(args, Sequence) else str(args)
    if isinstance(process, subprocess.TimeoutExpired):
        status = f"still running after {process.timeout} s (killed)"
    elif isinstance(process, subprocess.Popen) and process.poll() is None:
        status = "still running"
    else:
        status = f"exit status {getattr(process, 'returncode', None)}"
    return (
        f"child process {status}: {command}\n"
        f"--- stdout (tail) ---\n{_tail(stdout, limit)}\n"
        f"--- stderr (tail) ---\n{_tail(stderr, limit)}"
    )


def _is_pipe(process: object, name: str) -> bool:
    """A Popen's ``stdout`` is a file object, not what it printed."""
    return hasattr(getattr(process, name, None), "read")


def run_child(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float | None = 600,
    check: bool = True,
    **kwargs,
) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True, ...)`` for a test.

    With ``check`` (the default), a non-zero exit fails the test with
    :func:`describe_child`'s message; a child still running after ``timeout`` seconds (a
    generous deadline against a hang, never a performance budget; ``None`` for none) is killed
    and fails it the same way. Other keyword arguments (``env``, ``cwd``, ``input`` ...) go to
    :func:`subprocess.run`.
    """
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        result = subprocess.run(list(args), timeout=timeout, check=False, **kwargs)
    except subprocess.TimeoutExpired as expired:
        raise AssertionError(describe_child(expired)) from None
    if check and result.returncode != 0:
        raise AssertionError(describe_child(result))
    return result


def rest_of_output(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """What the process writes until it exits, read through the same file objects that
    waiting for a step read from: ``communicate()`` reads the pipes' descriptors and would
    lose the lines those objects already buffered (a race the loaded CI machine lost).

    A stream that is not a pipe (``DEVNULL``, a file) reads as ``""``. A process still running
    after ``timeout`` seconds is killed and fails the test with its output so far."""
    output: dict[str, str] = {}
    readers = [
        threading.Thread(
            target=lambda name=name: output.update({name: getattr(process, name).read()})
        )
        for name in ("stdout", "stderr")
        if getattr(process, name) is not None
    ]
    for reader in readers:
        reader.start()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        for reader in readers:
            reader.join(10)
        raise AssertionError(
            describe_child(process, output.get("stdout", ""), output.get("stderr", ""))
            + f"\n(still running after {timeout} s: killed)"
        ) from None
    for reader in readers:
        reader.join(timeout)
    return output.get("stdout", ""), output.get("stderr", "")
