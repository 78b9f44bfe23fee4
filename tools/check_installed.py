"""Check that distributions are installed from given wheels, not editable nor from an index.

    python tools/check_installed.py WHEEL...

For each wheel: the distribution of that name is installed and every file the wheel's RECORD
lists has, installed, the hash the wheel gives it. Exit 1 naming the first that is not.
"""

from __future__ import annotations

import importlib.metadata
import sys
import zipfile
from pathlib import Path


def record(text: str) -> dict[str, str]:
    return {row.split(",")[0]: row.split(",")[1] for row in text.splitlines() if row}


def problem(wheel: Path) -> str | None:
    name = wheel.name.split("-")[0]
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return f"{name} is not installed"
    with zipfile.ZipFile(wheel) as archive:
        path = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        expected = record(archive.read(path).decode())
    installed = record(dist.read_text("RECORD") or "")
    differ = [path for path, digest in expected.items() if digest and installed.get(path) != digest]
    if differ or '"editable": true' in (dist.read_text("direct_url.json") or ""):
        return f"{name} {dist.version} is not installed from {wheel.name}: {differ[:3]}"
    return None


def main(wheels: list[str]) -> int:
    for wheel in map(Path, wheels):
        error = problem(wheel)
        if error:
            print(f"check_installed: {error}", file=sys.stderr)
            return 1
        print(f"check_installed: {wheel.name} is what is installed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
