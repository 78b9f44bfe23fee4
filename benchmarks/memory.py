"""Memory and back-pressure with a stalled tracker (issue 7, requirement 4).

A tracker stops answering for ``--stall-seconds`` (60 by default) while the Trainer logs every
step. Its queue holds ``tracker_queue_size`` records: once it is full the loop waits (nothing is
dropped), so memory stays bounded by that limit. Each queue size runs in a fresh process, so
that one run's peak RSS is not another's. Per run this reports:

- the RSS when the stall began, the peak during it (a sampler thread reads the current RSS
  every 50 ms: psutil when installed, else /proc/self/statm; the process's ``ru_maxrss`` too),
  and their difference, next to the queue's largest depth (the worker's figure) and the most
  records pending (queued plus the batch in the stalled tracker's hands, sampled);
- that the loop waited: the longest gap between two steps, the worker's own accounting of the
  seconds the loop waited, and the warning delivery.py logs after ``STALL_WARNING_AFTER`` s;
- what the progress bar showed (stderr of the run, the lines that mention the tracker);
- that every record arrived once the tracker recovered: records delivered against the
  Trainer's log history.

    python benchmarks/memory.py [--stall-seconds 60] [--queue-sizes 100,10000] [--steps N]
                                [--close-timeout S]

``--close-timeout`` sets ``TrainingArguments.tracker_close_timeout`` (default: the Trainer's),
to see how closing interacts with a stall; how long the loop waits on a queue that does not
move is ``tracker_stall_timeout``, left at its default.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

QUEUE_SIZES = (100, 10000)
STALL_SECONDS = 60.0
# steps before the stall: start-up, allocator pools and first-call caches are behind us
ARM_AT_STEP = 200
SAMPLE_EVERY = 0.05


def current_rss() -> int:
    """Resident set size of this process now, in bytes (0 where it cannot be read)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        return psutil.Process().memory_info().rss
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss() -> int:
    """``ru_maxrss`` in bytes (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class Sampler:
    """Reads the RSS and the stalled worker's queue depth every ``SAMPLE_EVERY`` seconds."""

    def __init__(self):
        self.samples: list[tuple[float, int, int]] = []
        self.worker = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        began = time.perf_counter()
        while not self._stop.wait(SAMPLE_EVERY):
            depth = self.worker.pending if self.worker is not None else 0
            self.samples.append((time.perf_counter() - began, current_rss(), depth))


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _stalling_tracker(stall_seconds: float):
    from trackmux import Tracker

    class StallingTracker(Tracker):
        """Answers at once, except for ``stall_seconds`` after ``arm()``: a backend whose
        server stopped responding, then came back."""

        name = "stalling"

        def __init__(self, **settings):
            super().__init__(**settings)
            self.records = 0
            self.summaries = 0
            self.armed = threading.Event()
            self.stall_began: float | None = None
            self.stall_ended: float | None = None
            self.rss_at_stall = 0

        def start(self, run):
            return None

        def log_metrics(self, metrics, step, epoch=None):
            if self.armed.is_set() and self.stall_began is None:
                self.rss_at_stall = current_rss()
                self.stall_began = time.perf_counter()
                time.sleep(stall_seconds)
                self.stall_ended = time.perf_counter()
            self.records += 1

        def log_summary(self, metrics, step):
            self.summaries += 1

        def finish(self, status):
            pass

    return StallingTracker()


def child(
    queue_size: int,
    stall_seconds: float,
    steps: int,
    workdir: str,
    close_timeout: float | None = None,
) -> dict:
    """One run in this process: the figures as a dict."""
    from contenders import TASKS

    from trackmux import Trainer, TrainerCallback, TrainingArguments

    task = TASKS["tiny"]
    tracker = _stalling_tracker(stall_seconds)
    sampler = Sampler()
    step_times: list[float] = []

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            step_times.append(time.perf_counter())
            if state.global_step == ARM_AT_STEP:
                sampler.worker = tracker._worker
                tracker.armed.set()

    warnings = Warnings()
    logging.getLogger("trackmux").addHandler(warnings)
    args = TrainingArguments(
        output_dir=workdir,
        report_to="none",
        logging_steps=1,
        max_steps=steps,
        per_device_train_batch_size=task.batch_size,
        save_strategy="no",
        eval_strategy="no",
        tracker_queue_size=queue_size,
        # the progress bar is on: where the loop's back-pressure shows
        disable_tqdm=False,
        **({} if close_timeout is None else {"tracker_close_timeout": close_timeout}),
    )
    trainer = Trainer(
        task.model(),
        args,
        train_dataset=task.dataset(steps),
        callbacks=[Watch()],
        trackers=[tracker],
    )
    peak_before = peak_rss()
    sampler.start()
    began = time.perf_counter()
    try:
        trainer.train()
    finally:
        sampler.stop()
        logging.getLogger("trackmux").removeHandler(warnings)
    elapsed = time.perf_counter() - began
    worker = tracker._worker
    figures = worker.figures() if hasattr(worker, "figures") else {}
    during = [
        rss
        for moment, rss, _ in sampler.samples
        if tracker.stall_began is not None
        and tracker.stall_began - began <= moment <= (tracker.stall_ended or 1e18) - began
    ]
    gaps = [b - a for a, b in zip(step_times, step_times[1:])]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    return {
        "queue_size": queue_size,
        "stall_s": stall_seconds,
        "close_timeout_s": args.tracker_close_timeout,
        "steps": steps,
        "train_s": elapsed,
        "rss_at_stall_bytes": tracker.rss_at_stall,
        "rss_peak_during_stall_bytes": max(during, default=0),
        "rss_growth_bytes": max(during, default=0) - tracker.rss_at_stall,
        # the process's peak before training (imports, building the Trainer) and at the end
        "ru_maxrss_before_bytes": peak_before,
        "ru_maxrss_bytes": peak_rss(),
        "max_queue_depth_sampled": max((depth for _, _, depth in sampler.samples), default=0),
        "longest_step_gap_s": max(gaps, default=0.0),
        "worker": figures,
        "stall_warnings": [m for m in warnings.messages if "behind" in m],
        "logged": len(logged),
        "delivered": tracker.records,
        "summaries": tracker.summaries,
        "all_delivered": tracker.records == len(logged) and tracker.summaries == 1,
    }


# --------------------------------------------------------------------------- parent


def _progress_lines(stderr: str) -> list[str]:
    """The progress bar's distinct states that mention the stalled tracker."""
    seen: list[str] = []
    for line in re.split(r"[\r\n]", stderr):
        text = line.strip()
        if "stalling" in text and text not in seen:
            seen.append(text)
    return seen


def run_one(
    queue_size: int, stall_seconds: float, steps: int, close_timeout: float | None = None
) -> dict:
    env = dict(os.environ)
    env.setdefault("TRACKMUX_VERBOSITY", "warning")
    with tempfile.TemporaryDirectory(prefix="trackmux-bench-memory-") as workdir:
        done = subprocess.run(
            [sys.executable, __file__, "--child", str(queue_size), str(stall_seconds), str(steps)]
            + [workdir, "" if close_timeout is None else str(close_timeout)],
            env=env,
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"memory run (queue {queue_size}) failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    lines = _progress_lines(done.stderr)
    result["progress_bar"] = lines[:3] + (lines[-2:] if len(lines) > 5 else lines[3:])
    return result


def measure(
    stall_seconds: float = STALL_SECONDS,
    queue_sizes=QUEUE_SIZES,
    steps: int | None = None,
    close_timeout: float | None = None,
) -> dict:
    # enough steps to fill the largest queue during the stall, and as many after it
    steps = steps or ARM_AT_STEP + 2 * max(queue_sizes) + 100
    runs = [run_one(size, stall_seconds, steps, close_timeout) for size in queue_sizes]
    return {
        "stall_s": stall_seconds,
        "steps": steps,
        "arm_at_step": ARM_AT_STEP,
        "close_timeout_s": runs[0]["close_timeout_s"],
        "runs": runs,
    }


def format_report(result: dict) -> str:
    header = (
        f"{'queue':>6} {'queued':>6} {'pending':>7} {'RSS at stall':>12} {'peak':>9} "
        f"{'growth':>9} {'B/record':>8} {'loop waited':>11} {'warned':>6}  delivered"
    )
    lines = [
        f"memory: a tracker stalled {result['stall_s']:g} s at step {result['arm_at_step']}, "
        f"logging every step, {result['steps']} steps, tracker_close_timeout "
        f"{result['close_timeout_s']:g} s (RSS in MiB; queued: the worker's largest queue; "
        "pending: most records not yet delivered, sampled)",
        header,
        "-" * len(header),
    ]
    for run in result["runs"]:
        queued = run["worker"].get("max_queue", "?")
        pending = run["max_queue_depth_sampled"]
        waited = run["worker"].get("waited_s", run["longest_step_gap_s"])
        per_record = run["rss_growth_bytes"] / pending if pending else 0.0
        lines.append(
            f"{run['queue_size']:>6} {queued:>6} {pending:>7} "
            f"{run['rss_at_stall_bytes'] / 2**20:12.1f} "
            f"{run['rss_peak_during_stall_bytes'] / 2**20:9.1f} "
            f"{run['rss_growth_bytes'] / 2**20:9.2f} {per_record:8.0f} {waited:10.1f}s "
            f"{len(run['stall_warnings']):>6}  {run['delivered']}/{run['logged']}"
            f"{' all' if run['all_delivered'] else ' MISSING'}"
        )
    for run in result["runs"]:
        abandoned = run["worker"].get("abandoned")
        if abandoned:
            lines.append(
                f"  queue {run['queue_size']}: the tracker was abandoned with {abandoned} records "
                f"after the loop waited {run['worker'].get('waited_s', 0):.1f} s"
            )
    for run in result["runs"]:
        if run["stall_warnings"]:
            lines.append(f"  warning (queue {run['queue_size']}): {run['stall_warnings'][0]}")
        for text in run["progress_bar"][:2]:
            lines.append(f"  progress bar (queue {run['queue_size']}): {text[-150:]}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        queue_size, stall, steps, workdir, close_timeout = argv[1:6]
        timeout = float(close_timeout) if close_timeout else None
        result = child(int(queue_size), float(stall), int(steps), workdir, timeout)
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stall-seconds", type=float, default=STALL_SECONDS)
    parser.add_argument("--queue-sizes", default=",".join(map(str, QUEUE_SIZES)))
    parser.add_argument("--steps", type=int, help="training steps per run")
    parser.add_argument(
        "--close-timeout", type=float, help="TrainingArguments.tracker_close_timeout"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args(argv)
    sizes = [int(n) for n in options.queue_sizes.split(",") if n.strip()]
    result = measure(options.stall_seconds, sizes, options.steps, options.close_timeout)
    print(json.dumps(result, indent=2) if options.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
