"""Reading what a child process writes, for tests that interrupt a training subprocess."""

from __future__ import annotations

import subprocess
import threading


def rest_of_output(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """What the process writes until it exits, read through the same file objects that
    waiting for a step read from: ``communicate()`` reads the pipes' descriptors and would
    lose the lines those objects already buffered (a race the loaded CI machine lost)."""
    output: dict[str, str] = {}
    readers = [
        threading.Thread(
            target=lambda name=name: output.update({name: getattr(process, name).read()})
        )
        for name in ("stdout", "stderr")
    ]
    for reader in readers:
        reader.start()
    process.wait(timeout=timeout)  # a hung process fails the test here (TimeoutExpired)
    for reader in readers:
        reader.join(timeout)
    return output.get("stdout", ""), output.get("stderr", "")
