"""Generate the hook reference (docs/reference/hooks.md) from :mod:`trackmux.hookspecs`.

``python -m trackmux._hookdocs > docs/reference/hooks.md`` regenerates the page;
``python -m trackmux._hookdocs --check [PATH]`` exits 1 when the page differs from the
hookspecs. The docstrings are reStructuredText-flavoured; only what hookspecs.py uses is
converted: inline literals and roles, ``::`` code blocks and ``term``/indented definitions.
"""

from __future__ import annotations

import inspect
import re
import sys
import textwrap

from . import hookspecs

DEFAULT_PATH = "docs/reference/hooks.md"
REGENERATE = f"python -m trackmux._hookdocs > {DEFAULT_PATH}"
#: what every training event receives; a hook's other arguments are its "extra" ones
COMMON_ARGUMENTS = (
    "args",
    "state",
    "control",
    "model",
    "processing_class",
    "optimizer",
    "lr_scheduler",
    "train_dataloader",
    "eval_dataloader",
)

_ROLE = re.compile(r":(?:func|meth|class|mod|attr|data|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def hookspec_functions() -> list:
    """The hookspec functions, in declaration order."""
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return [value for value in vars(hookspecs).values() if hasattr(value, marker)]


def arguments(function) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


def extra_arguments(function) -> tuple[str, ...]:
    return tuple(name for name in arguments(function) if name not in COMMON_ARGUMENTS)


def is_training_event(function) -> bool:
    return set(COMMON_ARGUMENTS) <= set(arguments(function))


def _inline(text: str) -> str:
    hooks = {function.__name__ for function in hookspec_functions()}

    def role(match: re.Match) -> str:
        target = match.group(1)
        shown = target.rsplit(".", 1)[-1] if "~" in match.group(0) else target
        return f"[`{shown}`](#{shown})" if shown in hooks else f"`{shown}`"

    return _LITERAL.sub(r"`\1`", _ROLE.sub(role, text))


def _indented_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The indented lines from ``start`` on (blank lines inside kept, before it skipped) and
    the index after them; a blank line after the block is left to the caller."""
    begin = start
    while begin < len(lines) and not lines[begin].strip():
        begin += 1
    end = begin
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    while end > begin and not lines[end - 1].strip():
        end -= 1
    return lines[begin:end], end


def to_markdown(docstring: str) -> str:
    """Convert one cleaned docstring to Markdown."""
    lines = docstring.splitlines()
    out: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        next_indented = index + 1 < len(lines) and lines[index + 1].startswith(" ")
        if line.rstrip().endswith("::"):
            block, index = _indented_block(lines, index + 1)
            head = line.rstrip()[:-2].rstrip()
            if head:
                out.append(_inline(head) + ":")
            out += ["", "```python", textwrap.dedent("\n".join(block)), "```", ""]
        elif line.strip() and not line.startswith(" ") and next_indented:
            block, index = _indented_block(lines, index + 1)
            description = " ".join(part.strip() for part in block)
            out.append(f"- {_inline(line.strip())}: {_inline(description)}")
        else:
            out.append(_inline(line))
            index += 1
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _signature(function) -> str:
    call = f"def {function.__name__}({', '.join(arguments(function))}): ..."
    return textwrap.fill(call, width=88, subsequent_indent=" " * 4, break_on_hyphens=False)


def _section(function) -> str:
    docstring = inspect.getdoc(function)
    if not docstring:
        raise ValueError(f"hookspec {function.__name__} has no docstring")
    if is_training_event(function):
        receives = "the common arguments" + "".join(
            f", `{name}`" for name in extra_arguments(function)
        )
    else:
        receives = ", ".join(f"`{name}`" for name in arguments(function))
    return "\n".join(
        [
            f"### {function.__name__}",
            "",
            "```python",
            "@hookimpl",
            _signature(function),
            "```",
            "",
            f"Receives: {receives}.",
            "",
            to_markdown(docstring),
            "",
        ]
    )


def render() -> str:
    """The Markdown hook reference."""
    functions = hookspec_functions()
    parts = [
        "# Hook reference",
        "",
        f"<!-- Generated from trackmux/hookspecs.py by `{REGENERATE}`; do not edit. -->",
        "",
        to_markdown(inspect.getdoc(hookspecs)),
        "",
        "The common arguments are " + ", ".join(f"`{name}`" for name in COMMON_ARGUMENTS) + ".",
        "",
        "## Training events",
        "",
        "In declaration order; [Callbacks](../callbacks.md#events) shows when each fires.",
        "",
    ]
    parts += [_section(function) for function in functions if is_training_event(function)]
    parts += ["## Plugin discovery", ""]
    parts += [_section(function) for function in functions if not is_training_event(function)]
    return "\n".join(parts).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--check"]:
        path = argv[1] if len(argv) > 1 else DEFAULT_PATH
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            current = None
        if current != render():
            print(f"{path} is stale; regenerate it: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    if argv:
        print("usage: python -m trackmux._hookdocs [--check [PATH]]", file=sys.stderr)
        return 2
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
