"""trackmux's performance suite: the cost of tracking against a plain PyTorch loop.

    python benchmarks/run.py [--quick] [--repeats R] [--out DIR] [--threads N]
                             [--parts user,steps,dispatch,memory,startup]
                             [--user-steps N] [--window W] [--long [--long-steps N]]
                             [--steps N] [--models tiny,medium] [--logging-steps 1,10]
                             [--contenders plain,trackmux-none,...] [--profile]
                             [--stall-seconds S] [--startup | --no-startup]

The ``user`` part (as_user.py, on by default) measures as a user meets it: each run a fresh
process, trackers not settled, their start-up inside the timing, torch threads at their
default; the whole ``train()`` and the steady window, against the plain loop, interleaved; one
markdown table with every target of issue 14. The ``steps`` part is the old method (asked
for with ``--parts steps``): one process, a window after the warm-up, trackers settled before
it, torch on one thread; every contender trains the same model on the same batches, the
contenders interleaved (round-robin, the order rotated each repeat). The same invocation also
measures hook dispatch (dispatch.py), memory with a stalled tracker (memory.py) and start-up
(startup.py). See benchmarks/README.md for the method and how to read results.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a file or imported by the tests
    sys.path.insert(0, str(HERE))

import as_user  # noqa: E402
import dispatch  # noqa: E402
import memory  # noqa: E402
import peers  # noqa: E402
import startup  # noqa: E402
from contenders import (  # noqa: E402
    SLOW_TRACKER_DELAY,
    TASKS,
    Contender,
    Window,
    build_contenders,
    default_device,
    plain_model,
    trackmux_model,
)

# trackers must never phone home, and the info lines of each of the hundreds of Trainers (and
# of their trackers) would drown the table
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "COMET_ERROR_TRACKING_ENABLE": "false",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    "CODECARBON_COUNTRY_ISO_CODE": "USA",
    "CODECARBON_LOG_LEVEL": "error",
    "TRACKMUX_VERBOSITY": "warning",
}
QUICK = {
    "repeats": 3,
    "user_steps": 2000,
    "steps": {"tiny": 200, "medium": 20},
    "startup_runs": 3,
    "dispatch": {"events": 2000, "repeats": 3},
    "memory": {"stall_seconds": 3.0, "queue_sizes": (20, 2000)},
}
# many short rounds rather than a few long ones: a burst of load from another process then
# spoils one round of each contender, which the median discards
FULL = {
    "repeats": 9,
    "user_steps": as_user.STEPS,
    "startup_runs": 10,
    "dispatch": {"events": 20000, "repeats": 9},
    "memory": {"stall_seconds": memory.STALL_SECONDS, "queue_sizes": memory.QUEUE_SIZES},
}
PARTS = ("user", "steps", "dispatch", "memory", "startup")
# the old method (steps) only when asked for: the default measures as a user meets it
DEFAULT_PARTS = ("user", "dispatch", "memory", "startup")
PROFILE_THRESHOLD = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="The cost of tracking: trackmux against a plain PyTorch loop."
    )
    parser.add_argument("--quick", action="store_true", help="CI smoke run (under a minute)")
    parser.add_argument("--steps", type=int, help="timed steps per repeat, for every model")
    parser.add_argument("--warmup", type=int, help="untimed steps before the window")
    parser.add_argument("--repeats", type=int, help="rounds over all contenders")
    parser.add_argument("--out", default=str(HERE / "results"), help="output folder")
    parser.add_argument("--models", default=",".join(TASKS), help="comma-separated")
    parser.add_argument("--logging-steps", default="1,10", help="comma-separated intervals")
    parser.add_argument("--contenders", help="comma-separated names (plain is always run)")
    parser.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="TRACKERS",
        help="also time report_to=TRACKERS ('+'-separated, e.g. mlflow or jsonl+dvclive); "
        "repeatable",
    )
    parser.add_argument(
        "--no-settle",
        dest="settled",
        action="store_false",
        help="start the clock without waiting for the trackers to catch up (their start() "
        "then runs beside the timed steps)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch.set_num_threads; 0 keeps torch's default (default: torch's default for "
        "the user part, 1 for the steps part, see README)",
    )
    parser.add_argument(
        "--user-steps",
        type=int,
        help=f"user: training steps per run (default {as_user.STEPS}; --quick: 2000)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=as_user.WINDOW,
        help=f"user: steps per steady window (default {as_user.WINDOW})",
    )
    parser.add_argument(
        "--long",
        action="store_true",
        help="user: also the long case (jsonl+tensorboard+mlflow against report_to='none', "
        "logging every step, RSS of every process)",
    )
    parser.add_argument(
        "--long-steps",
        type=int,
        default=as_user.LONG_STEPS,
        help=f"user: steps of the long case (default {as_user.LONG_STEPS})",
    )
    parser.add_argument(
        "--long-repeats", type=int, default=1, help="user: repetitions of the long case"
    )
    parser.add_argument(
        "--configs",
        help="user: only these configurations, comma-separated, of "
        f"{','.join(c.key for c in as_user.CONFIGS + as_user.LONG)} (default: all)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile trackmux-none against plain (cProfile) for each model and interval",
    )
    parser.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"what to measure, comma-separated, of {','.join(PARTS)} (default: "
        f"{','.join(DEFAULT_PARTS)}; steps is the old method: trackers settled, one thread)",
    )
    parser.add_argument(
        "--stall-seconds",
        type=float,
        help=f"memory: how long the tracker stalls (default {memory.STALL_SECONDS:g}; --quick: 3)",
    )
    parser.add_argument(
        "--queue-sizes", help="memory: tracker_queue_size values, comma-separated (100,10000)"
    )
    parser.add_argument(
        "--close-timeout",
        type=float,
        help="memory: TrainingArguments.tracker_close_timeout (default: the Trainer's)",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--startup", action="store_true", help="only the start-up figures")
    group.add_argument("--no-startup", action="store_true", help="skip the start-up figures")
    options = parser.parse_args(argv)
    options.parts = [part.strip() for part in options.parts.split(",") if part.strip()]
    unknown = [part for part in options.parts if part not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if options.startup:
        options.parts = ["startup"]
    elif options.no_startup:
        options.parts = [part for part in options.parts if part != "startup"]
    options.models = [name.strip() for name in options.models.split(",") if name.strip()]
    unknown = [name for name in options.models if name not in TASKS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    options.extra = [[n.strip() for n in text.split("+") if n.strip()] for text in options.extra]
    options.logging_steps = [int(n) for n in options.logging_steps.split(",") if n.strip()]
    if not options.logging_steps or min(options.logging_steps) < 1:
        parser.error("--logging-steps: positive integers, e.g. 1,10")
    if (options.steps is not None and options.steps < 1) or (
        options.warmup is not None and options.warmup < 1
    ):
        parser.error("--steps and --warmup: at least 1 (the window starts at the end of a step)")
    preset = QUICK if options.quick else FULL
    options.repeats = options.repeats or preset["repeats"]
    options.user_steps = options.user_steps or preset["user_steps"]
    if options.window < 1 or options.user_steps < 2 * options.window:
        parser.error(
            f"--user-steps ({options.user_steps}) must be at least twice --window "
            f"({options.window}): the steady figure is a window after the first"
        )
    if options.long_steps < 2 * options.window:
        parser.error(f"--long-steps: at least twice --window ({options.window})")
    options.startup_runs = preset["startup_runs"]
    options.dispatch = preset["dispatch"]
    options.memory = dict(preset["memory"])
    if options.stall_seconds is not None:
        options.memory["stall_seconds"] = options.stall_seconds
    if options.close_timeout is not None:
        options.memory["close_timeout"] = options.close_timeout
    if options.queue_sizes:
        options.memory["queue_sizes"] = tuple(
            int(n) for n in options.queue_sizes.split(",") if n.strip()
        )
    steps = preset.get("steps", {})
    options.windows = {}
    for name in options.models:
        task = TASKS[name]
        timed = options.steps or steps.get(name, task.steps)
        warmup = task.warmup if options.warmup is None else options.warmup
        for interval in options.logging_steps:
            options.windows[name, interval] = Window(timed, warmup, interval)
    return options


# --------------------------------------------------------------------------- environment


def machine_info() -> dict:
    import pluggy
    import torch

    import trackmux

    device = default_device()
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "trackmux": trackmux.__version__,
        "pluggy": pluggy.__version__,
        "device": str(device),
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = list(os.getloadavg())
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plugin_info() -> dict:
    from trackmux.plugins import get_registry

    return {name: info.status for name, info in get_registry().plugins.items()}


# --------------------------------------------------------------------------- checks


def equivalence(options, workdir: str) -> dict:
    """Train plain and trackmux-none a few steps from the same start: the weights must
    agree, or the plain loop is not the same work and the ratios mean nothing."""
    report = {}
    for name in options.models:
        task = TASKS[name]
        window = Window(steps=8, warmup=2, logging_steps=min(options.logging_steps))
        plain, _ = plain_model(task, window)
        mine, _ = trackmux_model(task, window, "none", os.path.join(workdir, "equivalence"))
        report[name] = _same_weights(plain, mine)
        if peers.lightning_missing() is None:
            # Lightning trains on the plain loop's DataLoader: the same batches, so the same
            # weights. Hugging Face's Trainer draws its own batch order: same work, other
            # numbers, so it is not compared.
            theirs, _ = peers.lightning_model(task, window, os.path.join(workdir, "equivalence"))
            report[name]["lightning"] = _same_weights(plain, theirs)
    return report


def _same_weights(plain, other) -> dict:
    state = other.state_dict()
    difference = max(
        (value - state[key].to(value.device)).abs().max().item()
        for key, value in plain.state_dict().items()
    )
    return {"max_abs_weight_difference": difference, "same": difference <= 1e-6}


# --------------------------------------------------------------------------- measurement


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def measure(options, contenders: list[Contender], workdir: str) -> dict:
    """``{(model, interval, contender): [RunResult, ...]}``, one per repeat."""
    samples: dict[tuple, list] = {
        (name, interval, contender.name): []
        for (name, interval) in options.windows
        for contender in contenders
    }
    runs = 0

    def one(contender, task, window):
        nonlocal runs
        runs += 1
        directory = os.path.join(workdir, f"run-{runs}")
        gc.collect()  # garbage left by the previous contender must not be collected in this one
        try:
            return contender.run(task, window, directory, settled=options.settled)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    # an untimed round first: imports, allocator pools and first-call caches warm up
    for (name, interval), window in options.windows.items():
        short = Window(min(window.steps, 20), window.warmup, interval)
        for contender in contenders:
            one(contender, TASKS[name], short)
    for repeat in range(options.repeats):
        began = time.perf_counter()
        shift = repeat % len(contenders)
        order = contenders[shift:] + contenders[:shift]
        for (name, interval), window in options.windows.items():
            for contender in order:
                samples[name, interval, contender.name].append(one(contender, TASKS[name], window))
        _say(f"  repeat {repeat + 1}/{options.repeats}: {time.perf_counter() - began:.1f} s")
    return samples


def summarise(options, contenders: list[Contender], samples: dict) -> list[dict]:
    rows = []
    for (name, interval), window in options.windows.items():
        plain = [r.per_step for r in samples[name, interval, "plain"]]
        plain_median = statistics.median(plain)
        plain_cpu = statistics.median(r.cpu_per_step for r in samples[name, interval, "plain"])
        plain_best = min(plain)
        for contender in contenders:
            results = samples[name, interval, contender.name]
            times = [r.per_step for r in results]
            cpu = [r.cpu_per_step for r in results]
            # the same repeat ran both back to back: the per-repeat ratio shows the spread
            paired = [mine / floor for mine, floor in zip(times, plain)]
            row = {
                "model": name,
                "logging_steps": interval,
                "contender": contender.name,
                "steps": window.steps,
                "warmup": window.warmup,
                "per_repeat_s": times,
                "median_s": statistics.median(times),
                "ratio": statistics.median(times) / plain_median,
                "paired_ratio": {
                    "min": min(paired),
                    "median": statistics.median(paired),
                    "max": max(paired),
                },
                # noise only ever adds time: the fastest repeat is the least disturbed one
                "min_s": min(times),
                "min_ratio": min(times) / plain_best,
                "cpu_per_repeat_s": cpu,
                "cpu_median_s": statistics.median(cpu),
                "cpu_ratio": statistics.median(cpu) / plain_cpu,
            }
            if contender.slow:
                delivered = [r.info["delivered"] for r in results]
                logged = [r.info["logged"] for r in results]
                row["slow_tracker"] = {
                    "delay_s": SLOW_TRACKER_DELAY,
                    "delivered": delivered,
                    "logged": logged,
                    "all_delivered": delivered == logged,
                }
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- output


def format_table(rows: list[dict]) -> str:
    """us/step and ratio: medians; per-repeat: the range of contender/plain within a round;
    best: fastest repeat over plain's fastest; cpu: the same ratio in training-thread CPU
    time."""
    header = (
        f"{'model':<6} {'log':>3}  {'contender':<42} {'us/step':>9} {'ratio':>6} "
        f"{'per-repeat':>11}  {'best':>5}  {'cpu':>5}"
    )
    lines = [header, "-" * len(header)]
    previous = None
    for row in rows:
        group = (row["model"], row["logging_steps"])
        if previous is not None and group != previous:
            lines.append("")
        previous = group
        paired = row["paired_ratio"]
        spread = "" if row["contender"] == "plain" else f"{paired['min']:.2f}..{paired['max']:.2f}"
        note = ""
        if "slow_tracker" in row:
            slow = row["slow_tracker"]
            note = "  all records delivered" if slow["all_delivered"] else "  RECORDS MISSING"
        lines.append(
            f"{row['model']:<6} {row['logging_steps']:>3}  {row['contender']:<42} "
            f"{row['median_s'] * 1e6:9.1f} {row['ratio']:6.2f} {spread:>11}  "
            f"{row['min_ratio']:5.2f}  {row['cpu_ratio']:5.2f}{note}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups = list(dict.fromkeys((r["model"], r["logging_steps"]) for r in rows))
    names = [n for n in dict.fromkeys(r["contender"] for r in rows) if n != "plain"]
    ratio = {(r["model"], r["logging_steps"], r["contender"]): r["ratio"] for r in rows}
    width = 0.8 / max(1, len(names))
    figure, axes = plt.subplots(figsize=(11, 4.2))
    for index, name in enumerate(names):
        xs = [g + index * width for g in range(len(groups))]
        values = [ratio.get((*group, name), 1.0) for group in groups]
        # bars start at the plain loop (1.0): above it costs, below it is noise
        axes.bar(xs, [v - 1.0 for v in values], width, bottom=1.0, label=name)
    axes.axhline(1.0, color="black", linewidth=0.8)
    # a tracker set can cost 10x on the tiny model: a log scale keeps 1.05 readable next to it
    axes.set_yscale("log")
    low = min(0.9, 0.95 * min(ratio.values(), default=1))
    high = 1.15 * max(ratio.values(), default=1)
    axes.set_ylim(low, high)
    ticks = [t for t in (0.5, 0.7, 0.9, 1, 1.1, 1.5, 2, 3, 5, 10, 20) if low <= t <= high]
    axes.set_yticks(ticks, [f"{t:g}" for t in ticks])
    axes.minorticks_off()
    axes.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(groups))])
    axes.set_xticklabels([f"{model}\nlog every {n}" for model, n in groups])
    axes.set_ylabel("time per step / plain loop (log scale)")
    axes.set_title("time per step, median over repeats (1.0 = plain PyTorch loop)")
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return True


def plot_dispatch(result: dict, path: Path) -> bool:
    """ns per event against the number of callbacks / trackers, trackmux and the plain loop."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = list(dict.fromkeys((r["kind"], r["event"]) for r in result["rows"]))
    figure, all_axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6))
    for axes, (kind, event) in zip(all_axes if len(panels) > 1 else [all_axes], panels):
        rows = [r for r in result["rows"] if (r["kind"], r["event"]) == (kind, event)]
        counts = [r["count"] for r in rows]
        for name in rows[0]["ns_per_event"]:
            values = [r["ns_per_event"][name] / 1000 for r in rows]
            axes.plot(counts, values, marker="o", label=name)
        axes.set_xticks(counts)
        axes.set_xlabel(kind)
        axes.set_title(event, fontsize="medium")
        axes.set_ylim(bottom=0)
        axes.legend(fontsize="x-small")
    all_axes_first = all_axes[0] if len(panels) > 1 else all_axes
    all_axes_first.set_ylabel("us per event")
    figure.suptitle("hook dispatch: one event, n listeners")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def write_results(out: Path, results: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- targets


def targets(results: dict) -> list[dict]:
    """Issue 7's targets, each with the figure this run measured and whether it is met.
    Step figures are the tiny model logging every 10 steps (median ratio to the plain loop,
    ``best`` beside it); a target whose contender or part did not run is left out."""
    checks: list[dict] = []

    def add(name: str, figure: float, limit: float, unit: str, best: float | None = None):
        checks.append(
            {
                "target": name,
                "figure": figure,
                "best": best,
                "limit": limit,
                "unit": unit,
                "met": figure <= limit,
            }
        )

    rows = {
        r["contender"]: r
        for r in results.get("results", [])
        if r["model"] == "tiny" and r["logging_steps"] == 10
    }
    if "trackmux-none" in rows:
        none = rows["trackmux-none"]
        add('report_to="none"', none["ratio"], 1.05, "x plain", none["min_ratio"])
        four = rows.get("trackmux-jsonl+tensorboard+mlflow+dvclive")
        if four is not None:
            add(
                "jsonl + tensorboard + mlflow + dvclive",
                four["ratio"],
                1.10,
                "x plain",
                four["min_ratio"],
            )
        slow = rows.get("slow-tracker")
        if slow is not None:
            # what the 50 ms tracker adds to the same Trainer without it
            add(
                "a 50 ms tracker (slow-tracker / trackmux-none)",
                slow["median_s"] / none["median_s"],
                1.02,
                "x",
                slow["min_s"] / none["min_s"],
            )
        for peer in ("transformers", "lightning"):
            if peer in rows:
                # beaten: trackmux-none's ratio below the peer's, so the figure is their quotient
                add(
                    f"trackmux-none beats {peer} ({rows[peer]['ratio']:.2f}x plain)",
                    none["ratio"] / rows[peer]["ratio"],
                    1.0,
                    "x the peer",
                    none["min_ratio"] / rows[peer]["min_ratio"],
                )
    for row in results.get("dispatch", {}).get("rows", []):
        if row["kind"] == "callbacks":
            add(
                f"dispatch {row['event']}, {row['count']} callback(s)",
                row["ratio"]["trackmux"],
                2.0,
                "x plain loop",
            )
    for run in results.get("memory", {}).get("runs", []):
        add(
            f"memory: records lost, queue {run['queue_size']}",
            run["logged"] - run["delivered"],
            0,
            "records",
        )
    start = results.get("startup")
    if start:
        add("import trackmux", start["import"]["import_trackmux_s"] * 1e3, 50, "ms")
        add("trackmux plugins", start["plugins_command"]["trackmux_plugins_s"] * 1e3, 500, "ms")
        add("Trainer beyond import torch", start["construction"]["construction_s"] * 1e3, 200, "ms")
    return checks


def format_targets(checks: list[dict]) -> str:
    lines = ["targets (issue 7)"]
    for check in checks:
        best = "" if check["best"] is None else f" (best {check['best']:.2f})"
        lines.append(
            f"  {'met ' if check['met'] else 'MISS'}  {check['target']:<52} "
            f"{check['figure']:8.2f}{best} {check['unit']}, target <= {check['limit']:g}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    options = parse_args(argv)
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    out = Path(options.out).resolve()
    began = time.perf_counter()
    results: dict = {"machine": machine_info(), "quick": options.quick}
    if "user" in options.parts:
        results["user"] = run_user(options, out, argv)
    # the old method pins torch to one thread unless told otherwise
    threads = 1 if options.threads is None and "steps" in options.parts else options.threads
    if threads:
        import torch

        torch.set_num_threads(threads)
        results["machine"]["torch_threads"] = threads

    if "steps" in options.parts:
        results.update(run_steps(options, out))
    if "dispatch" in options.parts:
        _say(
            f"dispatch: {options.dispatch['repeats']} repeats of "
            f"{options.dispatch['events']} events"
        )
        results["dispatch"] = dispatch.measure(**options.dispatch)
        print()
        print(dispatch.format_report(results["dispatch"]))
    if "memory" in options.parts:
        settings = options.memory
        _say(
            f"memory: a tracker stalled {settings['stall_seconds']:g} s, queue sizes "
            f"{', '.join(map(str, settings['queue_sizes']))}"
        )
        results["memory"] = memory.measure(**settings)
        print()
        print(memory.format_report(results["memory"]))
    if "startup" in options.parts:
        _say(f"start-up: {options.startup_runs} fresh processes per figure")
        results["startup"] = startup.measure(options.startup_runs)
        print()
        print(startup.format_report(results["startup"]))
    results["targets"] = targets(results)
    if results["targets"]:
        print()
        print(format_targets(results["targets"]))
    results["elapsed_s"] = time.perf_counter() - began
    path = write_results(out, results)
    written = [path]
    if "results" in results and plot(results["results"], out / "results.png"):
        written.append(out / "results.png")
    if "dispatch" in results and plot_dispatch(results["dispatch"], out / "dispatch.png"):
        written.append(out / "dispatch.png")
    print(f"\nwrote {', '.join(map(str, written))}")
    return 0


def reproduce(argv) -> str:
    """The command line that reproduces this run, as its user would type it."""
    args = shlex.join(sys.argv[1:] if argv is None else list(argv))
    prefix = Path(sys.prefix)
    if prefix.parent.name == ".nox":  # a nox session's environment
        return f"nox -s {prefix.name} -- {args}".rstrip(" -")
    return f"python benchmarks/run.py {args}".rstrip()


def run_user(options, out: Path, argv) -> dict:
    long = f", long case {options.long_steps} steps" if options.long else ""
    _say(
        f"as a user meets it: {options.user_steps} steps x {options.repeats} repetitions"
        f"{long}, one fresh process per run"
    )
    result = as_user.measure(
        steps=options.user_steps,
        repeats=options.repeats,
        window=options.window,
        threads=options.threads or 0,
        long_steps=options.long_steps if options.long else None,
        long_repeats=options.long_repeats,
        only=frozenset(options.configs.split(",")) if options.configs else None,
        say=_say,
    )
    result["command"] = reproduce(argv)
    table = as_user.format_markdown(result, result["command"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "as-user.md").write_text(table + "\n", encoding="utf-8")
    print()
    print(table)
    return result


def run_steps(options, out: Path) -> dict:
    # trackers write where they run (mlflow's ./mlruns, dvclive's dvc.yaml): not in the repo
    home = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="trackmux-bench-") as workdir:
        os.chdir(workdir)
        try:
            return _run_steps(options, out, workdir)
        finally:
            os.chdir(home)


def _run_steps(options, out: Path, workdir: str) -> dict:
    contenders, skipped = build_contenders(extra=options.extra)
    if options.contenders:
        wanted = {"plain", *(n.strip() for n in options.contenders.split(","))}
        unknown = wanted - {c.name for c in contenders} - {name for name, _ in skipped}
        if unknown:
            raise SystemExit(f"--contenders: unknown {', '.join(sorted(unknown))}")
        contenders = [c for c in contenders if c.name in wanted]
        skipped = [(name, why) for name, why in skipped if name in wanted]
    for name, why in skipped:
        _say(f"skipped {name}: {why}")
    check = equivalence(options, workdir)
    for name, verdict in check.items():
        for who, figures in (("trackmux-none", verdict), ("lightning", verdict.get("lightning"))):
            if figures is not None and not figures["same"]:
                _say(
                    f"WARNING: plain and {who} weights differ on {name} by "
                    f"{figures['max_abs_weight_difference']:.3g}: not the same work"
                )
    _say(
        f"{len(contenders)} contenders x {len(options.windows)} (model, interval) x "
        f"{options.repeats} repeats"
    )
    samples = measure(options, contenders, workdir)
    rows = summarise(options, contenders, samples)
    print(format_table(rows))
    for name, why in skipped:
        print(f"skipped {name}: {why}")
    section = {
        "settings": {
            "repeats": options.repeats,
            "settled": options.settled,
            "logging_steps": options.logging_steps,
            "models": {
                name: {
                    "layers": list(TASKS[name].layers),
                    "batch_size": TASKS[name].batch_size,
                    "loss": TASKS[name].loss,
                }
                for name in options.models
            },
        },
        "plugins": plugin_info(),
        "contenders": [
            {
                "name": c.name,
                "report_to": c.report_to,
                "trackers": sorted(c.trackers),
                "peer": c.peer,
            }
            for c in contenders
        ],
        "skipped": [{"name": name, "why": why} for name, why in skipped],
        "equivalence": check,
        "results": rows,
    }
    if options.profile:
        section["profiles"] = profile(options, out, workdir)
    else:
        high = [r for r in rows if r["contender"] == "trackmux-none"]
        high = [r for r in high if r["ratio"] > PROFILE_THRESHOLD]
        if high:
            print(
                f"\ntrackmux-none is above {PROFILE_THRESHOLD:.2f}x plain in "
                f"{len(high)} case(s): rerun with --profile to see where the time goes"
            )
    return section


def profile(options, out: Path, workdir: str) -> list[dict]:
    import profiling

    reports = []
    contender = Contender("trackmux-none", "none")
    for (name, interval), window in options.windows.items():
        report = profiling.compare(contender, TASKS[name], window, os.path.join(workdir, "prof"))
        text = profiling.format_report(report)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"profile-{name}-log{interval}.txt").write_text(text + "\n", encoding="utf-8")
        print()
        print(text)
        report["extra"] = report["extra"][:40]
        report["plain_only"] = report["plain_only"][:10]
        report["trackmux_cumulative"] = report["trackmux_cumulative"][:40]
        reports.append(report)
    return reports


if __name__ == "__main__":
    sys.exit(main())
