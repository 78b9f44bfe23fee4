"""The ``trackmux`` command: ``plugins`` lists what is installed and why something is not
available; ``demo`` trains a small model and says where each tracker put its data; ``show``
summarises a run from its jsonl log."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="trackmux", description="One PyTorch training loop, every experiment tracker."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    plugins = commands.add_parser("plugins", help="list tracker plugins and their status")
    plugins.add_argument("--json", action="store_true", help="print JSON instead of a table")

    demo = commands.add_parser("demo", help="train a small model, reporting to every tracker")
    demo.add_argument(
        "--report-to",
        default="all",
        help='trackers to report to: "all" (default), "none", or names separated by commas',
    )
    demo.add_argument("--output-dir", default="trackmux_demo", help="where the run is written")
    demo.add_argument(
        "--seconds", type=float, default=30.0, help="about how long to train (default 30)"
    )

    show = commands.add_parser("show", help="summarise a run from its jsonl log")
    show.add_argument("run_dir", help="a run directory (output_dir/runs/<run>) or an output_dir")

    options = parser.parse_args(argv)
    if options.version:
        from . import __version__

        print(f"trackmux {__version__}")
        return 0
    if options.command == "plugins":
        return _plugins(options.json)
    if options.command == "demo":
        from .demo import run_demo

        return run_demo(options.report_to, options.output_dir, options.seconds)
    if options.command == "show":
        return _show(options.run_dir)
    parser.print_help()
    return 2


def _plugins(as_json: bool) -> int:
    from .plugins import autoload_disabled, get_registry
    from .report_to import KNOWN_TRACKERS, distribution_name

    registry = get_registry()
    infos = sorted(registry.plugins.values(), key=lambda info: (not info.builtin, info.name))
    rows = [info.as_dict() for info in infos]
    missing = [name for name in KNOWN_TRACKERS if name not in registry.plugins]
    if as_json:
        print(
            json.dumps(
                {
                    "plugins": rows,
                    "not_installed": [
                        {"name": name, "fix": f"pip install {distribution_name(name)}"}
                        for name in missing
                    ],
                    "autoload_disabled": autoload_disabled(),
                },
                indent=2,
            )
        )
        return 0
    table = [("NAME", "DISTRIBUTION", "BACKEND", "STATUS", "MODE")]
    for row in rows:
        distribution = " ".join(filter(None, [row["distribution"], row["version"]])) or "-"
        backend = row["backend"] or "-"
        if row["backend_version"]:
            backend += f" (installed {row['backend_version']})"
        status = row["status"] if row["status"] == "available" else row["reason"]
        table.append((row["name"], distribution, backend, status, row["mode"] or "-"))
    widths = [max(len(str(line[i])) for line in table) for i in range(4)]
    for line in table:
        print("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(line[:4])), line[4])
    fixes = [(row["name"], row["fix"]) for row in rows if row["fix"]]
    if fixes:
        print()
        for name, fix in fixes:
            print(f"to enable {name}: {fix}")
    if missing:
        print()
        print("not installed: " + ", ".join(missing) + "  (pip install trackmux-<name>)")
    if autoload_disabled():
        print("\nTRACKMUX_DISABLE_PLUGIN_AUTOLOAD is set: entry points were not loaded")
    return 0


def _show(run_dir: str) -> int:
    import os

    from .runlog import find_runs, read_run
    from .trackers.jsonl import EVENTS_FILE

    if not os.path.isfile(os.path.join(run_dir, EVENTS_FILE)) and not os.path.isfile(run_dir):
        runs = find_runs(run_dir)
        if not runs:
            print(f"trackmux show: no run log in {run_dir!r}", file=sys.stderr)
            return 1
        run_dir = runs[-1]
    run = read_run(run_dir)
    print(f"run {run.name}  ({run.path})")
    status = run.status or "running or interrupted (no finish record)"
    duration = ""
    if run.started and run.ended:
        duration = f", {run.ended - run.started:.1f} s"
    print(f"status: {status}{duration}, {run.sessions} session(s)")
    shown = {k: run.config[k] for k in ("learning_rate", "max_steps", "seed") if k in run.config}
    if shown:
        print("config: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    for name, history in sorted(run.metrics.items()):
        values = [value for _, value in history]
        step, last = history[-1]
        lowest = min(values)
        print(f"  {name}: last {last:.6g} at step {step}, min {lowest:.6g}, {len(values)} points")
    for name, value in sorted(run.summary.items()):
        print(f"  {name}: {value:.6g}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
