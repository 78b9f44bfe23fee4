"""Where a trackmux contender spends time per step beyond the plain loop.

Both loops run the same window under cProfile (enabled only between the end of the warmup
and the last timed step), clocked by the training thread's CPU time so that other processes
on a busy machine do not land in the figures. Each function's own time per step in the plain loop is subtracted
from its own time in the trackmux run: what is left is trackmux's extra work, function by
function, plus the extra calls per step. cProfile slows Python code far more than the C++
kernels it calls, so its totals overstate the overhead: read the ranking, not the ratio.
Work done directly in a loop body that was already running when the profiler started
(trackmux's ``_training_loop``, the plain loop's ``for``) is seen by no entry.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import sys
import time
from dataclasses import dataclass

from contenders import Contender, Task, Window

_ROOTS = sorted(
    {os.path.dirname(os.path.dirname(os.__file__)), *(p for p in sys.path if p)},
    key=len,
    reverse=True,
)


def short_path(filename: str) -> str:
    for root in _ROOTS:
        if filename.startswith(root + os.sep):
            return filename[len(root) + 1 :]
    return filename


def _label(key) -> str:
    filename, line, function = key
    if filename == "~":  # a builtin or a C method
        return function
    return f"{short_path(filename)}:{line}({function})"


@dataclass
class FunctionCost:
    label: str
    extra_own_us: float  # own time per step, trackmux minus plain
    own_us: float  # own time per step in the trackmux run
    cumulative_us: float  # cumulative time per step in the trackmux run
    calls: float  # calls per step in the trackmux run
    plain_calls: float  # calls per step in the plain loop

    def as_dict(self) -> dict:
        return dict(vars(self))


def _per_step(stats: pstats.Stats, steps: int) -> dict:
    return {
        key: (calls / steps, own / steps * 1e6, cumulative / steps * 1e6)
        for key, (_, calls, own, cumulative, _) in stats.stats.items()
    }


def profile_run(contender: Contender, task: Task, window: Window, workdir: str):
    profiler = cProfile.Profile(time.thread_time)
    result = contender.run(task, window, workdir, profiler=profiler)
    return pstats.Stats(profiler), result


def compare(contender: Contender, task: Task, window: Window, workdir: str) -> dict:
    """The extra cost per step of ``contender`` over the plain loop, by function."""
    plain_stats, plain_result = profile_run(Contender("plain"), task, window, workdir)
    stats, result = profile_run(contender, task, window, workdir)
    plain = _per_step(plain_stats, window.steps)
    mine = _per_step(stats, window.steps)
    costs = []
    for key in mine.keys() | plain.keys():
        calls, own, cumulative = mine.get(key, (0.0, 0.0, 0.0))
        plain_calls, plain_own, _ = plain.get(key, (0.0, 0.0, 0.0))
        costs.append(
            FunctionCost(_label(key), own - plain_own, own, cumulative, calls, plain_calls)
        )
    total_plain = sum(own for _, own, _ in plain.values())
    total = sum(own for _, own, _ in mine.values())
    return {
        "contender": contender.name,
        "model": task.name,
        "logging_steps": window.logging_steps,
        "steps": window.steps,
        "profiled_plain_us_per_step": total_plain,
        "profiled_us_per_step": total,
        "unprofiled_plain_us_per_step": plain_result.per_step * 1e6,
        "unprofiled_us_per_step": result.per_step * 1e6,
        "extra": [c.as_dict() for c in sorted(costs, key=lambda c: -c.extra_own_us)],
        # the plain loop's own work that trackmux does under other names
        "plain_only": [
            c.as_dict()
            for c in sorted(costs, key=lambda c: c.extra_own_us)
            if c.calls == 0 and c.plain_calls > 0
        ],
        "trackmux_cumulative": [
            c.as_dict()
            for c in sorted(costs, key=lambda c: -c.cumulative_us)
            if ("trackmux" in c.label or "pluggy" in c.label) and c.calls >= 0.1
        ],
    }


def format_report(report: dict, top: int = 20) -> str:
    lines = [
        f"profile: {report['contender']} vs plain, model {report['model']}, log every "
        f"{report['logging_steps']} steps, {report['steps']} steps under cProfile",
        f"  own time per step under the profiler: plain {report['profiled_plain_us_per_step']:.1f}"
        f" us, {report['contender']} {report['profiled_us_per_step']:.1f} us "
        f"(without profiler in these runs: {report['unprofiled_plain_us_per_step']:.1f} / "
        f"{report['unprofiled_us_per_step']:.1f} us)",
        "",
        f"  {'extra us/step':>13} {'calls/step':>10} {'(plain)':>8}  function "
        "(+: called more often than in the plain loop)",
    ]
    for cost in report["extra"][:top]:
        more = "+" if cost["calls"] > cost["plain_calls"] + 1e-9 else " "
        lines.append(
            f"  {cost['extra_own_us']:13.2f} {cost['calls']:10.2f} {cost['plain_calls']:8.2f} "
            f"{more}{cost['label']}"
        )
    lines += ["", "  the plain loop's own functions (trackmux does this work under other names):"]
    for cost in report["plain_only"][:5]:
        lines.append(
            f"  {cost['extra_own_us']:13.2f} {cost['calls']:10.2f} {cost['plain_calls']:8.2f}  "
            f"{cost['label']}"
        )
    lines += ["", f"  {'cumul us/step':>13} {'own us/step':>11} {'calls/step':>10}  function"]
    for cost in report["trackmux_cumulative"][:top]:
        lines.append(
            f"  {cost['cumulative_us']:13.2f} {cost['own_us']:11.2f} {cost['calls']:10.2f}  "
            f"{cost['label']}"
        )
    return "\n".join(lines)
