"""The ``trackmux`` command: ``plugins`` lists what is installed and why something is not
available; ``demo`` trains a small model and says where each tracker put its data; ``show``
summarises a run from its jsonl log, ``plot`` draws its curves and ``sync`` replays it into
other trackers.

Exit codes: 0 done, 1 an error (no run log, a tracker failed), 2 a usage error, 130 ``sync``
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys

#: what ``trackmux show`` calls a loss-like metric (best = lowest): words of the last part of
#: the name (``eval/val_loss`` -> val, loss), looked for first
LOWER_IS_BETTER = frozenset(
    [
        "loss",
        "error",
        "err",
        "cost",
        "mse",
        "mae",
        "mape",
        "smape",
        "rmse",
        "nll",
        "perplexity",
        "ppl",
        "wer",
        "cer",
        "ter",
    ]
)
#: and a score (best = highest): a word of the name starting with one of these
HIGHER_IS_BETTER = tuple(
    [
        "acc",
        "f1",
        "precision",
        "recall",
        "auc",
        "auroc",
        "bleu",
        "rouge",
        "map",
        "iou",
        "dice",
        "r2",
        "score",
        "top1",
        "top5",
        "match",
    ]
)
#: TrainingArguments fields ``show`` leaves out of the config summary (shown elsewhere)
_CONFIG_NOISE = ("output_dir", "logging_dir", "run_name")
CONFIG_SHOWN = 12
#: the image ``trackmux plot`` writes into the run directory when no ``-o`` is given
DEFAULT_PLOT = "curves.png"


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
    show.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory (output_dir/runs/<run>) or an output_dir",
    )
    show.add_argument("--json", action="store_true", help="print JSON instead of text")

    plot = commands.add_parser("plot", help="draw a run's metric curves (needs matplotlib)")
    plot.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory (output_dir/runs/<run>) or an output_dir",
    )
    plot.add_argument(
        "-o",
        "--output",
        help="image file, by extension: png, svg, pdf (default: curves.png in the run directory)",
    )
    plot.add_argument(
        "--metrics",
        metavar="PATTERNS",
        help="names or patterns separated by commas (train/loss,eval/*); default: all but "
        "runtimes and throughputs",
    )

    sync = commands.add_parser("sync", help="replay a run's jsonl log into other trackers")
    sync.add_argument(
        "run_dir",
        metavar="RUN_DIR",
        help="a run directory (output_dir/runs/<run>) or an output_dir",
    )
    sync.add_argument(
        "--to",
        required=True,
        metavar="NAMES",
        help="trackers to replay into, separated by commas (mlflow,wandb)",
    )
    sync.add_argument(
        "--tracker-config",
        action="append",
        default=[],
        metavar="SETTING",
        help="a tracker setting, NAME.KEY=VALUE (mlflow.tracking_uri=http://127.0.0.1:5000) or "
        'a JSON object ({"mlflow": {"experiment_name": "x"}}); repeatable',
    )
    sync.add_argument(
        "--output-dir",
        metavar="DIR",
        help="output_dir the trackers get (default: the run's own, the folder holding runs/)",
    )
    sync.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds each session may take to close",
    )
    sync.add_argument("-v", "--verbose", action="store_true", help="show trackmux's log lines")

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
        return _show(options.run_dir, options.json)
    if options.command == "plot":
        return _plot(options.run_dir, options.output, options.metrics)
    if options.command == "sync":
        return _sync(options)
    parser.print_help()
    return 2


def _plugins(as_json: bool) -> int:
    from .plugins import autoload_disabled, distribution_name, get_registry, install_hints
    from .report_to import KNOWN_TRACKERS

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
                        {
                            "name": name,
                            "distribution": distribution_name(name),
                            "install": dict(install_hints([name])),
                        }
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
        print("not installed: " + ", ".join(missing))
        print(f"  tracker NAME is distribution trackmux-NAME ('_' as '-'); e.g. {missing[0]}:")
        for where, command in install_hints(missing[:1]):
            print(f"  {where + ':':<19}{command}")
    if autoload_disabled():
        print("\nTRACKMUX_DISABLE_PLUGIN_AUTOLOAD is set: entry points were not loaded")
    return 0


def _find_run(command: str, run_dir: str) -> str | None:
    """``run_dir`` itself when it holds a run log, else the newest run under it (an
    output_dir); None, with a message, when there is none."""
    from .runlog import events_path, find_runs

    if os.path.isfile(events_path(run_dir)):
        return run_dir
    runs = find_runs(run_dir)
    if not runs:
        print(f"trackmux {command}: no run log in {run_dir!r}", file=sys.stderr)
        return None
    return runs[-1]


# -- show -------------------------------------------------------------------------------------


def goal(name: str) -> str | None:
    """Which way a metric gets better: "min" (a loss, an error), "max" (an accuracy, a
    score) or None (runtimes, learning rates, gradient norms...), from the words of the last
    part of its name."""
    words = [w for w in re.split(r"[^a-z0-9]+", name.rsplit("/", 1)[-1].lower()) if w]
    if any(word in LOWER_IS_BETTER for word in words):
        return "min"
    if any(word.startswith(HIGHER_IS_BETTER) for word in words):
        return "max"
    return None


def _metric_summary(history: list[tuple[int, float]], name: str) -> dict:
    step, last = history[-1]
    summary = {"last": last, "last_step": step, "points": len(history), "goal": goal(name)}
    finite = [(s, v) for s, v in history if math.isfinite(v)]
    if summary["goal"] and finite:
        pick = min if summary["goal"] == "min" else max
        best_step, best = pick(finite, key=lambda point: point[1])
        summary.update(best=best, best_step=best_step)
    return summary


def _training_defaults() -> dict:
    """A default TrainingArguments' values, those transformers derives at construction
    included."""
    from .training_args import TrainingArguments

    return TrainingArguments().to_dict()


def interesting_config(config: dict) -> dict:
    """The config without what says nothing about this run: TrainingArguments fields at
    their defaults, and paths and names shown elsewhere; keys that are not TrainingArguments
    fields come first."""
    from .hf_fields import FIELDS, NO_EFFECT, REFUSED

    defaults = _training_defaults()
    # fields without effect on training (do_eval, ...) and refused ones, which can only hold
    # their default (hub_token's placeholder is logged redacted), say nothing about the run
    silent = {name for name, status in FIELDS.items() if status.status in (NO_EFFECT, REFUSED)}
    own, changed = {}, {}
    for key, value in config.items():
        if key in _CONFIG_NOISE or key in silent:
            continue
        if key not in defaults:
            own[key] = value
            continue
        default = defaults[key]
        # the log holds lists as JSON text, like every tracker's params
        if value != default and not (isinstance(default, list) and value == json.dumps(default)):
            changed[key] = value
    # the user's own values (model, hyperparameters, a plain loop's config) come first
    return {**own, **changed}


def summarize(run) -> dict:
    """What ``trackmux show --json`` prints for a :class:`~trackmux.runlog.RunLog`."""
    from .sync import split_sessions

    sessions = split_sessions(run.records)
    config = dict(run.config)
    for record in run.records:
        if record.get("type") == "params":
            config.update(record.get("params") or {})
    last = sessions[-1] if sessions else None
    finished = last is not None and last.status is not None
    durations = [s.ended - s.started for s in sessions if s.started and s.ended]
    return {
        "run": run.name or os.path.basename(run.path),
        "path": run.path,
        "status": last.status if finished else None,
        "finished": finished,
        "started": run.started,
        "duration_s": sum(durations) if durations else None,
        "sessions": [
            {
                "kind": s.kind,
                "resumed": s.resumed,
                "step": s.step,
                "last_step": s.last_step,
                "points": s.points,
                "status": s.status,
                "duration_s": s.ended - s.started if s.started and s.ended else None,
            }
            for s in sessions
        ],
        "config_fields": len(config),
        "config_shown": interesting_config(config),
        "config": config,
        "metrics": {
            name: _metric_summary(history, name)
            for name, history in sorted(run.metrics.items())
            if history
        },
        "summary": dict(sorted(run.summary.items())),
        "artifacts": [
            {
                "kind": a.get("kind"),
                "path": a.get("path"),
                "step": a.get("step"),
                "exists": bool(a.get("path")) and os.path.exists(a["path"]),
            }
            for a in run.artifacts
        ],
        "delivery": _delivery(run),
    }


def _delivery(run) -> dict:
    """Per tracker fed from the journal (the delivery process, ``trackmux sync``): how many
    of its records reached the backend, and how its run stands (the state file)."""
    from .sync import SyncError, read_state

    try:
        trackers = read_state(run.path)["trackers"]
    except (OSError, SyncError):
        return {}
    keys = ("records", "status", "finished", "error", "gave_up", "where")
    return {
        name: {**{key: entry.get(key) for key in keys}, "of": len(run.records)}
        for name, entry in sorted(trackers.items())
    }


NOT_FINISHED = "did not finish (no finish record: crashed or still running)"


def _number_text(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _seconds_text(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{rest:02d}s" if hours else f"{minutes}m{rest:02d}s"


def _json_safe(value):
    # JSON has no NaN/inf: written as strings, as the run log does
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _show(run_dir: str, as_json: bool = False) -> int:
    from .runlog import read_run

    found = _find_run("show", run_dir)
    if found is None:
        return 1
    info = summarize(read_run(found))
    if as_json:
        print(json.dumps(_json_safe(info), indent=2))
        return 0
    print(f"run {info['run']}  ({info['path']})")
    print(f"status: {info['status'] if info['finished'] else NOT_FINISHED}")
    sessions = info["sessions"]
    print(f"duration: {_seconds_text(info['duration_s'])} in {len(sessions)} session(s)")
    for number, session in enumerate(sessions, 1):
        opened = f"resumed at step {session['step']}" if session["resumed"] else "new"
        if session["kind"] != "train":
            opened = f"at step {session['step']}"
        steps = "" if session["last_step"] is None else f", last step {session['last_step']}"
        status = session["status"] or "no finish record"
        print(
            f"  {number}. {session['kind']} ({opened}{steps}): {session['points']} point(s), "
            f"{_seconds_text(session['duration_s'])}, {status}"
        )
    shown = info["config_shown"]
    print(f"config: {info['config_fields']} field(s)", end="")
    if shown:
        extra = len(shown) - CONFIG_SHOWN
        items = list(shown.items())[:CONFIG_SHOWN]
        print(", not at their defaults: " + ", ".join(f"{k}={v}" for k, v in items), end="")
        if extra > 0:
            print(f" ... and {extra} more (--json shows all)", end="")
    print()
    if info["metrics"]:
        print("metrics:")
    for name, m in info["metrics"].items():
        best = ""
        if "best" in m:
            best = f", best {_number_text(m['best'])} ({m['goal']}) at step {m['best_step']}"
        print(
            f"  {name}: last {_number_text(m['last'])} at step {m['last_step']}{best}, "
            f"{m['points']} point(s)"
        )
    if not info["metrics"]:
        print("no metrics")
    if info["summary"]:
        print("summary: " + ", ".join(f"{k}={_number_text(v)}" for k, v in info["summary"].items()))
    for artifact in info["artifacts"]:
        gone = "" if artifact["exists"] else " (no longer exists)"
        print(f"artifact: {artifact['kind']} at step {artifact['step']}: {artifact['path']}{gone}")
    if info["delivery"]:
        print("delivery (from the journal):")
    from .delivery_process import describe
    from .values import redact_text

    for name, entry in info["delivery"].items():
        print(f"  {redact_text(describe(name, entry, entry['of']))}")
    return 0


# -- plot -------------------------------------------------------------------------------------


def _plot(run_dir: str, output: str | None, metrics: str | None) -> int:
    from .plot import PlotError, plot_run
    from .runlog import read_run

    found = _find_run("plot", run_dir)
    if found is None:
        return 1
    # beside the run's data, not in the current folder (a clone, where it would be untracked)
    output = output or os.path.join(found, DEFAULT_PLOT)
    patterns = [p.strip() for p in metrics.split(",") if p.strip()] if metrics else None
    try:
        drawn = plot_run(read_run(found), output, patterns)
    except PlotError as error:
        print(f"trackmux plot: {error}", file=sys.stderr)
        return 1
    print(f"{output}: {len(drawn)} metric(s) of run {os.path.basename(found)}: {', '.join(drawn)}")
    return 0


# -- sync -------------------------------------------------------------------------------------


class _Usage(Exception):
    pass


def tracker_settings(texts: list[str]) -> dict[str, dict]:
    """``--tracker-config`` values: ``NAME.KEY=VALUE`` (VALUE read as JSON when it parses:
    numbers, true/false; as text otherwise) or a JSON object of objects."""
    settings: dict[str, dict] = {}
    for text in texts:
        if text.lstrip().startswith("{"):
            try:
                given = json.loads(text)
            except json.JSONDecodeError as error:
                raise _Usage(f"--tracker-config {text!r} is not valid JSON: {error}") from error
            if not all(isinstance(value, dict) for value in given.values()):
                raise _Usage(
                    f'--tracker-config {text!r}: expected {{"tracker": {{"setting": value}}}}'
                )
            for name, values in given.items():
                settings.setdefault(name, {}).update(values)
            continue
        match = re.fullmatch(r"([\w-]+)\.([\w.-]+)=(.*)", text, re.S)
        if match is None:
            raise _Usage(
                f"--tracker-config {text!r}: expected NAME.KEY=VALUE "
                "(mlflow.tracking_uri=http://127.0.0.1:5000) or a JSON object"
            )
        name, key, value = match.groups()
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
        settings.setdefault(name, {})[key] = value
    return settings


def _sync_targets(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise _Usage("--to names no tracker")
    if "jsonl" in names:
        raise _Usage(
            "cannot sync into jsonl: the run's jsonl log is what sync replays; name other "
            "trackers (--to mlflow,tensorboard)"
        )
    for word in ("all", "none"):
        if word in names:
            raise _Usage(f"--to {word!r}: name the trackers to replay into (--to mlflow,wandb)")
    return list(dict.fromkeys(names))


def _sync(options) -> int:
    from .plugins import get_registry
    from .report_to import ReportToError, resolve
    from .sync import SyncError, sync_run

    try:
        names = _sync_targets(options.to)
        settings = tracker_settings(options.tracker_config)
        unused = sorted(set(settings) - set(names))
        if unused:
            raise _Usage(f"--tracker-config sets {', '.join(unused)}, which --to does not name")
        resolve(names, get_registry())
    except (_Usage, ReportToError) as error:
        print(f"trackmux sync: {error}", file=sys.stderr)
        return 2
    found = _find_run("sync", options.run_dir)
    if found is None:
        return 1
    run_logger = logging.getLogger("trackmux.run")
    quiet = not options.verbose and run_logger.level == logging.NOTSET
    if quiet:
        # one "reporting to" and one "tracker time" line per replayed session: noise here
        run_logger.setLevel(logging.WARNING)
    try:
        results = sync_run(
            found,
            names,
            tracker_config=settings,
            output_dir=options.output_dir,
            close_timeout=options.timeout,
            warn=lambda line: print(line, file=sys.stderr),
        )
    except (SyncError, OSError) as error:
        print(f"trackmux sync: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # the remote run was closed as killed; the next sync goes on from the saved state
        print("trackmux sync: interrupted; the next sync continues from here", file=sys.stderr)
        return 130
    finally:
        if quiet:
            run_logger.setLevel(logging.NOTSET)
    total = results[0].total if results else 0
    print(f"run {os.path.basename(os.path.normpath(found))} ({found}): {total} records")
    for result in results:
        print("  " + result.line())
    return 1 if any(result.error for result in results) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
