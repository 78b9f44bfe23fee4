"""Running the documentation: a fenced ``python`` block right after a ``<!-- runnable -->``
line is code a test executes, so every example in docs/ is known to work."""

from __future__ import annotations

import re
from pathlib import Path

RUNNABLE_MARK = "<!-- runnable -->"
_BLOCK = re.compile(re.escape(RUNNABLE_MARK) + r"\n```python\n(.*?)^```$", re.S | re.M)


def runnable_blocks(page) -> list[str]:
    """The marked python blocks of a markdown page (a path or its text), in order."""
    text = Path(page).read_text(encoding="utf-8") if isinstance(page, Path) else page
    return _BLOCK.findall(text)


def run_page(page: Path, namespace: dict | None = None) -> dict:
    """Execute the marked blocks of ``page`` in order in one namespace (as a reader pasting
    them into one session would) and return it. Fails if the page has no marked block."""
    blocks = runnable_blocks(page)
    if not blocks:
        raise AssertionError(f"{page} has no {RUNNABLE_MARK} python block")
    namespace = {"__name__": Path(page).stem} if namespace is None else namespace
    for number, block in enumerate(blocks, 1):
        code = compile(block, f"{page} (runnable block {number})", "exec")
        exec(code, namespace)  # noqa: S102 - our own documentation
    return namespace
