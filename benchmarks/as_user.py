"""The cost of tracking as a user meets it (issue 14, requirement 9): one fresh process per run,
trackers not settled, their start-up (imports, backend start) and close inside the timing,
torch threads at their default.

    python benchmarks/run.py --parts user [--user-steps 8000] [--repeats R] [--window 1000]
                             [--long [--long-steps 100000]] [--threads N]

Each repetition runs the plain PyTorch loop (once per logging interval) and every
configuration, each in a fresh interpreter, the order rotated by one each repetition, so load
drift on the machine falls on the plain loop and the configurations alike. Per run it takes the
wall time of the whole ``trainer.train()`` call (for the plain loop: its loader, optimizer and
loop) and the time of every ``window``-step window; the steady figure is the median of the
windows after the first. Ratios are medians over repetitions against the plain loop's medians.

While a run goes on, this process reads the resident set size of the training process and of
every process it started (``/proc``) every ``SAMPLE_EVERY`` seconds. It makes itself the
"child subreaper" of its runs (Linux), so a process that outlives the training process (a
delivery process finishing in the background) is still seen, timed (``after_train_s``: from
``train()``'s return until the last process of the run ended) and waited for before the next
run starts.

``--long`` adds the long case: ``report_to="none"`` and jsonl + tensorboard + mlflow logging
every step for ``--long-steps`` steps, with the RSS of both processes at the start, middle and
end of ``train()``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

WINDOW = 1000
STEPS = 8000
LONG_STEPS = 100_000
SAMPLE_EVERY = 0.5
# how long a run's leftover processes (delivery finishing after train()) may take
DRAIN_TIMEOUT = 900.0
# RSS is "flat" when it grew less than this, start to end of train(), relative to the start
FLAT_GROWTH = 0.10
FOUR = ("jsonl", "tensorboard", "mlflow", "dvclive")
THREE = ("jsonl", "tensorboard", "mlflow")
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Config:
    """One thing to time: ``report_to`` None is the plain loop; ``limit`` is the target ratio
    (to the plain loop with the same logging interval, or to ``baseline``; a long-case
    configuration without one is itself the reference)."""

    key: str
    label: str
    report_to: str | tuple[str, ...] | None
    logging_steps: int
    limit: float | None = None
    baseline: str | None = None

    @property
    def plain(self) -> bool:
        return self.report_to is None


CONFIGS = (
    Config("none", 'report_to="none"', "none", 10, 1.03),
    Config("four-10", "jsonl + tensorboard + mlflow + dvclive", FOUR, 10, 1.05),
    Config("four-1", "jsonl + tensorboard + mlflow + dvclive", FOUR, 1, 1.15),
    Config("all-10", 'report_to="all"', "all", 10, 1.10),
)
LONG = (
    Config("long-none", 'report_to="none"', "none", 1),
    Config("long-three", "jsonl + tensorboard + mlflow", THREE, 1, 1.2, baseline="long-none"),
)

LONG_KEYS = frozenset(c.key for c in LONG)


def plain_config(logging_steps: int) -> Config:
    return Config(f"plain-{logging_steps}", "plain PyTorch loop", None, logging_steps)


def unavailable(config: Config, registry) -> str | None:
    """Why ``config`` cannot run here (a tracker it names is not installed), or None."""
    if config.plain or isinstance(config.report_to, str):  # "none", "all": always run
        return None
    absent = [n for n in config.report_to if not (registry.get(n) and registry.get(n).available)]
    return f"not installed: {', '.join(absent)}" if absent else None


# --------------------------------------------------------------------------- the child


def warm_torch() -> None:
    """torch's first optimizer step imports ``torch._dynamo`` (1-10 s on a busy 2-core
    machine): torch's cost, the same in both loops, done before either clock starts so that
    it does not dilute the whole-run ratio."""
    import torch

    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.ones(1, 1)).sum().backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    scheduler.step()


def child(spec: dict) -> dict:
    """One run in this fresh process: the figures as a dict."""
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    from contenders import TASKS, Window, plain_model, trackmux_model

    warm_torch()
    task = TASKS["tiny"]
    steps, lap = spec["steps"], spec["window"]
    # the old stopwatch's window is the steps after the first lap (it needs one to exist)
    window = Window(steps=steps - lap, warmup=lap, logging_steps=spec["logging_steps"])
    report_to = spec["report_to"]
    if report_to is None:
        _, result = plain_model(task, window, lap_every=lap)
    else:
        report_to = report_to if isinstance(report_to, str) else list(report_to)
        workdir = os.path.join(os.getcwd(), "output")
        _, result = trackmux_model(task, window, report_to, workdir, settled=False, lap_every=lap)
    ended = time.time()
    laps = result.info["laps"]
    return {
        "train_s": result.info["train_s"],
        # wall clock of train()'s start and end, to place the RSS samples taken outside
        "train_began": ended - result.info["train_s"],
        "train_ended": ended,
        "laps_s": [b - a for a, b in zip(laps, laps[1:])],
        "first_lap_s": laps[0] - result.info["began"] if laps else None,
        "window": lap,
        "logged": result.info["logged"],
        "torch_threads": torch.get_num_threads(),
        "trackers": result.info.get("trackers", []),
    }


# --------------------------------------------------------------------------- processes


def _ppids() -> dict[int, tuple[int, str]]:
    """``{pid: (ppid, state)}`` of every process this user can see."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields follow the last ")"
        fields = data[data.rfind(b")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), fields[0].decode())
    return found


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            words = cmdline.read().split(b"\0")
    except OSError:
        return "?"
    return " ".join(w.decode(errors="replace") for w in words if w)[:160]


def run_tree(root: int | None, ppids: dict[int, tuple[int, str]]) -> list[int]:
    """The living descendants of ``root`` and the orphans reparented to this process (what
    the run left behind; this process runs one run at a time), zombies left out."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in ppids.items():
        children.setdefault(ppid, []).append(pid)
    me = os.getpid()
    todo = [pid for pid in children.get(me, []) if pid != root]
    if root is not None:
        todo += children.get(root, [])
    found = []
    while todo:
        pid = todo.pop()
        if ppids.get(pid, (0, "Z"))[1] != "Z":
            found.append(pid)
        todo += children.get(pid, [])
    return found


def _reap_orphans() -> None:
    """Collect the exit status of orphans that ended as our children (zombies)."""
    me = os.getpid()
    for pid, (ppid, state) in _ppids().items():
        if ppid == me and state == "Z":
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


@contextlib.contextmanager
def subreaper():
    """Orphans of the runs become this process's children (Linux; elsewhere a no-op)."""
    prctl = getattr(ctypes.CDLL(None), "prctl", None) if sys.platform == "linux" else None
    if prctl is None or prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        yield False
        return
    try:
        yield True
    finally:
        prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)
        _reap_orphans()


# --------------------------------------------------------------------------- one run


def _environment(threads: int) -> dict:
    env = dict(os.environ)
    path = [str(HERE)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(path)
    if not threads:
        # torch's default, as a user gets it: no inherited pin
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)
    return env


def run_one(
    config: Config,
    steps: int,
    window: int,
    threads: int,
    workdir: str,
    sample_every: float = SAMPLE_EVERY,
) -> dict:
    """``config`` in a fresh interpreter in its own folder; its figures and RSS samples."""
    directory = tempfile.mkdtemp(prefix=f"{config.key}-", dir=workdir)
    spec = {
        "report_to": config.report_to,
        "logging_steps": config.logging_steps,
        "steps": steps,
        "window": window,
        "threads": threads,
    }
    result_path = os.path.join(directory, "result.json")
    log_path = os.path.join(directory, "child.log")
    command = [sys.executable, str(Path(__file__)), "--child", json.dumps(spec), result_path]
    samples, names = [], {}
    try:
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command, cwd=directory, stdout=log, stderr=subprocess.STDOUT,
                env=_environment(threads),
            )  # fmt: skip
            while process.poll() is None:
                samples.append(_sample(process.pid, names))
                time.sleep(sample_every)
        exited = time.time()
        left, drained = _drain(samples, names, sample_every)
        if process.returncode != 0 or not os.path.exists(result_path):
            tail = Path(log_path).read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(
                f"{config.key}: the run failed (exit status {process.returncode}):\n"
                f"{shlex.join(command)}\n{tail}"
            )
        with open(result_path, encoding="utf-8") as handle:
            result = json.load(handle)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    result["after_train_s"] = max(exited, drained) - result["train_ended"]
    result["left_running"] = left
    result["samples"] = samples
    result["processes"] = {str(pid): name for pid, name in names.items()}
    return result


def _sample(root: int, names: dict[int, str]) -> dict:
    others = run_tree(root, _ppids())
    for pid in others:
        if pid not in names:
            names[pid] = _command(pid)
    return {
        "t": time.time(),
        "training": _rss(root),
        "children": {str(pid): _rss(pid) for pid in others},
    }


def _drain(
    samples: list[dict], names: dict[int, str], sample_every: float = SAMPLE_EVERY
) -> tuple[list[str], float]:
    """Wait (untimed for the ratios) until every process the run left has ended; after
    ``DRAIN_TIMEOUT`` stop them. Returns what had to be stopped and when the last one ended."""
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        _reap_orphans()
        left = run_tree(None, _ppids())
        if not left:
            return [], time.time()
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            return [names.get(pid) or _command(pid) for pid in left], time.time()
        samples.append(_sample_orphans(left, names))
        time.sleep(sample_every)


def _sample_orphans(pids: list[int], names: dict[int, str]) -> dict:
    for pid in pids:
        names.setdefault(pid, _command(pid))
    return {"t": time.time(), "training": 0, "children": {str(pid): _rss(pid) for pid in pids}}


# --------------------------------------------------------------------------- the runs


def measure(
    steps: int = STEPS,
    repeats: int = 5,
    window: int = WINDOW,
    threads: int = 0,
    long_steps: int | None = None,
    long_repeats: int = 1,
    only: frozenset[str] | None = None,
    sample_every: float | None = None,
    say=lambda text: None,
) -> dict:
    """Every configuration interleaved with the plain loop; with ``long_steps``, the long
    case after them (its two configurations interleaved with each other). ``only``: the keys
    of the configurations to run (their baselines come along); the others are listed as not
    run."""
    from trackmux.plugins import get_registry

    registry = get_registry()
    sample_every = sample_every or SAMPLE_EVERY
    chosen = CONFIGS + (LONG if long_steps else ())
    if only is not None:
        unknown = only - {c.key for c in CONFIGS + LONG}
        if unknown:
            raise ValueError(
                f"unknown configuration(s) {', '.join(sorted(unknown))}: choose from "
                f"{', '.join(c.key for c in CONFIGS + LONG)}"
            )
        only = only | {c.baseline for c in chosen if c.key in only and c.baseline}
    configs, skipped = [], {}
    for config in chosen:
        why = unavailable(config, registry)
        if only is not None and config.key not in only:
            skipped[config.key] = "not run (--configs)"
        elif why:
            skipped[config.key] = why
        else:
            configs.append(config)
    short = [c for c in configs if c.key not in LONG_KEYS]
    plains = [plain_config(n) for n in sorted({c.logging_steps for c in short}, reverse=True)]
    load_start = os.getloadavg()
    began = time.perf_counter()
    runs: dict[str, list[dict]] = {}
    failures: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="trackmux-user-") as workdir, subreaper() as reaping:
        rounds = [(plains + short, steps, repeats)]
        long = [c for c in configs if c.key in LONG_KEYS]
        if long:
            rounds.append((long, long_steps, long_repeats))
        for todo, length, count in rounds:
            for repeat in range(count):
                shift = repeat % len(todo)
                for config in todo[shift:] + todo[:shift]:
                    say(f"  {config.key}: {length} steps, repetition {repeat + 1}/{count}")
                    try:
                        result = run_one(config, length, window, threads, workdir, sample_every)
                    except RuntimeError as error:
                        # one broken run must not cost the hour the others took
                        say(f"  FAILED: {error}")
                        failures.setdefault(config.key, []).append(str(error))
                        continue
                    runs.setdefault(config.key, []).append(result)
    for key, errors in failures.items():
        if key not in runs:
            skipped[key] = f"failed: {errors[0].splitlines()[0]}"
    return {
        "settings": {
            "steps": steps,
            "repeats": repeats,
            "window": window,
            "threads": threads or "torch default",
            "long_steps": long_steps,
            "long_repeats": long_repeats,
            "sample_every_s": sample_every,
            "subreaper": reaping,
        },
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "elapsed_s": time.perf_counter() - began,
        "configs": [asdict(c) for c in plains + configs],
        # what each configuration's runs resolved report_to to
        "trackers": {key: results[0].get("trackers", []) for key, results in runs.items()},
        "skipped": skipped,
        "failures": failures,
        "runs": runs,
        "rows": summarise(plains + list(chosen), runs, skipped),
    }


def steady_s(result: dict) -> float:
    """Median seconds of a window after the first one (start-up and first-call caches)."""
    laps = result["laps_s"]
    return statistics.median(laps) if laps else float("nan")


def summarise(configs: list[Config], runs: dict[str, list[dict]], skipped: dict) -> list[dict]:
    """One row per configuration, in order: its medians, its ratios to its baseline, and
    whether they meet its target; a skipped one says why."""
    rows = []
    for config in configs:
        if config.key in skipped:
            rows.append(
                {"key": config.key, "label": config.label, "logging_steps": config.logging_steps,
                 "limit": config.limit, "skipped": skipped[config.key]}
            )  # fmt: skip
            continue
        results = runs[config.key]
        base_key = config.baseline
        if base_key is None and not config.plain and config.key not in LONG_KEYS:
            base_key = f"plain-{config.logging_steps}"
        whole = statistics.median(r["train_s"] for r in results)
        steady = statistics.median(steady_s(r) for r in results)
        row = {
            "key": config.key,
            "label": config.label,
            "logging_steps": config.logging_steps,
            "limit": config.limit,
            "baseline": base_key,
            "repeats": len(results),
            "whole_s": whole,
            "steady_us_per_step": steady / results[0]["window"] * 1e6,
            "after_train_s": max(r["after_train_s"] for r in results),
            "left_running": sorted({p for r in results for p in r["left_running"]}),
        }
        base = runs.get(base_key) if base_key is not None else None
        if base_key is not None and not base:
            row["whole_ratio"] = row["steady_ratio"] = float("nan")  # its baseline failed
        elif base_key is not None:
            row["whole_ratio"] = whole / statistics.median(r["train_s"] for r in base)
            row["steady_ratio"] = steady / statistics.median(steady_s(r) for r in base)
            # repetition by repetition against the baseline run of the same round
            paired = [a["train_s"] / b["train_s"] for a, b in zip(results, base)]
            row["whole_ratio_range"] = [min(paired), max(paired)]
        else:
            row["whole_ratio"] = row["steady_ratio"] = 1.0
        if config.limit is not None:
            row["whole_met"] = row["whole_ratio"] <= config.limit
            row["steady_met"] = row["steady_ratio"] <= config.limit
        if config.key in LONG_KEYS:
            row["rss"] = rss_report(results[-1])
        rows.append(row)
    return rows


def rss_report(result: dict) -> dict:
    """RSS of the training process and of its child processes (summed) at 10%, 50% and the
    end of ``train()``, and whether each stayed flat (grew less than ``FLAT_GROWTH``)."""
    began, ended = result["train_began"], result["train_ended"]
    during = [s for s in result["samples"] if began <= s["t"] <= ended]
    report = {"samples": len(during)}
    for who in ("training", "children"):
        points = {}
        for name, fraction in (("start", 0.1), ("middle", 0.5), ("end", 1.0)):
            moment = began + fraction * (ended - began)
            sample = min(during, key=lambda s: abs(s["t"] - moment), default=None)
            if sample is None:
                points[name] = None
            elif who == "training":
                points[name] = sample["training"]
            else:
                points[name] = sum(sample["children"].values())
        start, end = points["start"], points["end"]
        points["processes"] = max((len(s["children"]) for s in during), default=0)
        points["flat"] = None if not start else (end - start) <= FLAT_GROWTH * start
        report[who] = points
    return report


# --------------------------------------------------------------------------- output


def _ratio(row: dict, which: str) -> str:
    ratio = row[f"{which}_ratio"]
    if row["baseline"] is None and row["key"] in LONG_KEYS:
        return "reference"
    if row.get("limit") is None:
        return f"{ratio:.2f}x"
    return f"{ratio:.2f}x {'met' if row[f'{which}_met'] else '**MISS**'}"


def _mib(value) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def format_markdown(result: dict, command: str) -> str:
    """One markdown table with every target's figure, the load and the command."""
    settings = result["settings"]
    lines = [
        f"trackmux as a user meets it: tiny model, {settings['steps']} steps x "
        f"{settings['repeats']} repetitions, steady = median {settings['window']}-step window "
        f"after the first, torch threads: {settings['threads']}, trackers not settled",
        "",
        "| configuration | log every | target | whole train() | ratio | steady µs/step "
        "| ratio | done after train() |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        target = "" if row.get("limit") is None else f"<= {row['limit']:g}x"
        if target and row["key"].startswith("long"):
            target += " none"
        label = row["label"]
        trackers = result["trackers"].get(row["key"])
        if row["key"] == "all-10" and trackers:
            label += f" ({len(trackers)}: {', '.join(trackers)})"
        if row["key"].startswith("long"):
            label = f"long, {settings['long_steps']} steps: {label}"
        if "skipped" in row:
            lines.append(
                f"| {label} | {row['logging_steps']} | {target} | skipped: {row['skipped']} "
                "| | | | |"
            )
            continue
        spread = row.get("whole_ratio_range")
        spread = f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread and row["repeats"] > 1 else ""
        lines.append(
            f"| {label} | {row['logging_steps']} | {target} | {row['whole_s']:.1f} s "
            f"| {_ratio(row, 'whole')}{spread} | {row['steady_us_per_step']:.0f} "
            f"| {_ratio(row, 'steady')} | +{row['after_train_s']:.1f} s |"
        )
    for row in result["rows"]:
        rss = row.get("rss")
        if not rss:
            continue
        for who, title in (("training", "training process"), ("children", "child processes")):
            points = rss[who]
            if who == "children" and not points["processes"]:
                text = "none started"
            else:
                flat = {True: "flat", False: "**GROWS**", None: "-"}[points["flat"]]
                text = (
                    f"{_mib(points['start'])} / {_mib(points['middle'])} / {_mib(points['end'])}"
                    f" MiB (start/middle/end of train(), {points['processes'] or 1} "
                    f"process(es)): {flat}"
                )
            lines.append(f"| RSS, {row['label']}: {title} | 1 | flat | {text} | | | | |")
    start = ", ".join(f"{x:.2f}" for x in result["load_average_start"])
    end = ", ".join(f"{x:.2f}" for x in result["load_average_end"])
    lines += [
        "",
        f"Load average (1, 5, 15 min): {start} at the start, {end} at the end; "
        f"{os.cpu_count()} CPUs; {result['elapsed_s'] / 60:.1f} min.",
        f"Command: `{command}`",
    ]
    return "\n".join(lines)


def table_again(results: dict) -> str:
    """The table of a finished run (``results.json``), its rows computed by this version."""
    user = results["user"]
    configs = [
        Config(**{**c, "report_to": c["report_to"] if c["report_to"] in (None, "none", "all")
                  else tuple(c["report_to"])})
        for c in user["configs"]
    ]  # fmt: skip
    keys = {c.key for c in configs}
    configs += [c for c in CONFIGS + LONG if c.key in user["skipped"] and c.key not in keys]
    order = {c.key: n for n, c in enumerate(CONFIGS + LONG)}
    configs.sort(key=lambda c: (not c.plain, order.get(c.key, 0)))
    user["rows"] = summarise(configs, user["runs"], user["skipped"])
    return format_markdown(user, user["command"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("SPEC", "RESULT"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--table",
        metavar="RESULTS_JSON",
        help="print the table again from a run's results.json (its rows recomputed)",
    )
    options = parser.parse_args(argv)
    if options.table:
        print(table_again(json.loads(Path(options.table).read_text(encoding="utf-8"))))
        return 0
    if options.child:
        spec, path = options.child
        figures = child(json.loads(spec))
        Path(path).write_text(json.dumps(figures), encoding="utf-8")
        return 0
    parser.error("run it through benchmarks/run.py --parts user")
    return 2


if __name__ == "__main__":
    sys.exit(main())
