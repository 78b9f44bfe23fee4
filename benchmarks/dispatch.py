"""Hook dispatch: what one event costs through trackmux, against a plain for-loop over the
same objects.

- callbacks: ``Trainer._event("on_step_end")`` and ``Trainer._event("on_log", logs=...)`` (the
  pluggy hook call, the callback bridge, the handler's loop) on a Trainer whose only callbacks
  are N counting ones, against ``for cb in callbacks: cb.on_step_end(args, state, control,
  model=..., ...)`` with the same keyword objects the Trainer hands over;
- trackers: ``Trainer._event("on_log", logs=...)`` with N counting trackers behind the hub (an
  open session: one queue and worker thread each), against ``for t in trackers:
  t.log_metrics(metrics, step, epoch)``, and against ``queue``: the same loop handing each
  record to a hand-written ``queue.Queue`` per tracker, drained by one thread each (the
  floor of asynchronous delivery). ``hub-loop`` is what the training thread pays per event
  (the worker threads run meanwhile, and take the interpreter lock from it);
  ``hub-delivered`` also waits until every tracker received every record;
- Hugging Face's own ``CallbackHandler.call_event``, when transformers is installed, for
  comparison.

Each figure is the median over repeats of nanoseconds per event; the contenders are
interleaved within every repeat. Run alone with ``python benchmarks/dispatch.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import queue
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

COUNTS = (1, 5, 15)
# a training log line as the Trainer emits it
LOGS = {"loss": 0.4321, "grad_norm": 1.234, "learning_rate": 9.9e-4, "epoch": 0.25}
TARGET_RATIO = 2.0


def _counting_callback_class():
    from trackmux import TrainerCallback

    class Counting(TrainerCallback):
        def __init__(self):
            self.calls = 0

        def on_step_end(self, args, state, control, **kwargs):
            self.calls += 1

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.calls += 1

    return Counting


def _counting_tracker_class():
    from trackmux import Tracker

    class Counting(Tracker):
        name = "counting"

        def __init__(self, **settings):
            super().__init__(**settings)
            self.calls = 0

        def start(self, run):
            return None

        def log_metrics(self, metrics, step, epoch=None):
            self.calls += 1

        def finish(self, status):
            pass

    return Counting


def _bare_trainer(workdir: str, callbacks=(), trackers=(), queue_size: int = 10000):
    """A Trainer whose events reach only ``callbacks`` and ``trackers``: the default flow and
    printer callbacks are removed, so each event costs dispatch and nothing else."""
    from contenders import TASKS

    from trackmux import DefaultFlowCallback, PrinterCallback, Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=workdir,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        tracker_queue_size=queue_size,
    )
    # the handler warns about a Trainer without DefaultFlowCallback: here that is the point
    with _quiet("trackmux"):
        trainer = Trainer(
            TASKS["tiny"].model(), args, callbacks=list(callbacks), trackers=list(trackers)
        )
        trainer.remove_callback(DefaultFlowCallback)
        trainer.remove_callback(PrinterCallback)
    return trainer


@contextlib.contextmanager
def _quiet(name: str):
    import logging

    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _keywords(trainer) -> dict:
    # what Trainer._event passes besides args, state, control
    return {
        "model": trainer.model,
        "processing_class": trainer.processing_class,
        "optimizer": trainer.optimizer,
        "lr_scheduler": trainer.lr_scheduler,
        "train_dataloader": trainer.train_dataloader,
        "eval_dataloader": trainer.eval_dataloader,
    }


def _time(function: Callable[[int], None], events: int) -> float:
    """Nanoseconds per event of ``function(events)``, the collector off as timeit does."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        began = time.perf_counter_ns()
        function(events)
        return (time.perf_counter_ns() - began) / events
    finally:
        if enabled:
            gc.enable()


# --------------------------------------------------------------------------- contenders


def callback_cases(count: int, workdir: str):
    """``({event: {name: run(events)}}, callbacks)`` for ``count`` counting callbacks."""
    counting = _counting_callback_class()
    callbacks = [counting() for _ in range(count)]
    trainer = _bare_trainer(workdir, callbacks=callbacks)
    args, state, control = trainer.args, trainer.state, trainer.control
    keywords = _keywords(trainer)
    event = trainer._event
    logs = dict(LOGS)

    def trackmux_step(events: int) -> None:
        for _ in range(events):
            event("on_step_end")

    def plain_step(events: int) -> None:
        for _ in range(events):
            for callback in callbacks:
                callback.on_step_end(args, state, control, **keywords)

    def trackmux_log(events: int) -> None:
        for _ in range(events):
            event("on_log", logs=logs)

    def plain_log(events: int) -> None:
        for _ in range(events):
            for callback in callbacks:
                callback.on_log(args, state, control, logs=logs, **keywords)

    cases = {
        "on_step_end": {"trackmux": trackmux_step, "plain": plain_step},
        "on_log": {"trackmux": trackmux_log, "plain": plain_log},
    }
    hf = _hf_handler(callbacks_count=count)
    if hf is not None:
        cases["on_step_end"]["transformers"] = hf[0]
        cases["on_log"]["transformers"] = hf[1]
    return cases, callbacks


def _hf_handler(callbacks_count: int):
    """Hugging Face's CallbackHandler with ``callbacks_count`` counting callbacks, or None
    when transformers is not installed."""
    try:
        import transformers
        from transformers.trainer_callback import CallbackHandler
    except ImportError:
        return None

    class Counting(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            pass

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    with _quiet("transformers"):
        handler = CallbackHandler(
            [Counting() for _ in range(callbacks_count)], None, None, None, None
        )
    args = transformers.TrainingArguments(output_dir=tempfile.gettempdir(), report_to="none")
    state, control = transformers.TrainerState(), transformers.TrainerControl()
    logs = dict(LOGS)

    def step(events: int) -> None:
        for _ in range(events):
            handler.on_step_end(args, state, control)

    def log(events: int) -> None:
        for _ in range(events):
            handler.on_log(args, state, control, logs)

    return step, log


@contextlib.contextmanager
def _queued(trackers: list):
    """One unbounded queue and one draining thread per tracker, as someone would write
    asynchronous delivery by hand; yields the queues."""
    queues = [queue.Queue() for _ in trackers]

    def drain(source: queue.Queue, tracker) -> None:
        while (item := source.get()) is not None:
            tracker.log_metrics(*item)

    threads = [
        threading.Thread(target=drain, args=(source, tracker), daemon=True)
        for source, tracker in zip(queues, trackers)
    ]
    for thread in threads:
        thread.start()
    try:
        yield queues
    finally:
        for source in queues:
            source.put(None)
        for thread in threads:
            thread.join()


def tracker_cases(count: int, workdir: str, events: int, queues: list):
    """``(hub, {name: run(events)})`` for ``count`` counting trackers behind the hub;
    ``queues``: the hand-written queues of :func:`_queued`, one per tracker."""
    counting = _counting_tracker_class()
    hub_trackers = [counting() for _ in range(count)]
    plain_trackers = [counting() for _ in range(count)]
    # room for every record of every repeat: this measures dispatch, not back-pressure
    trainer = _bare_trainer(workdir, trackers=hub_trackers, queue_size=max(10000, 4 * events))
    hub = trainer.trackers
    event = trainer._event
    logs = dict(LOGS)
    metrics = {key: value for key, value in logs.items() if key != "epoch"}
    step, epoch = 0, logs["epoch"]

    def hub_loop(events: int) -> None:
        for _ in range(events):
            event("on_log", logs=logs)

    def hub_delivered(events: int) -> None:
        hub_loop(events)
        for worker in hub.workers:
            worker.flush(300)

    def plain(events: int) -> None:
        for _ in range(events):
            for tracker in plain_trackers:
                tracker.log_metrics(metrics, step, epoch)

    def queued(events: int) -> None:
        for _ in range(events):
            for source in queues:
                source.put_nowait((metrics, step, epoch))

    cases = {"plain": plain, "hub-loop": hub_loop, "hub-delivered": hub_delivered}
    if queues:
        cases["queue"] = queued
    return hub, cases


# --------------------------------------------------------------------------- measurement


def _median_runs(cases: dict, events: int, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for function in cases.values():  # warm caches and the specialising interpreter
        function(min(events, 200))
    for repeat in range(repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            samples[name].append(_time(cases[name], events))
    return samples


def _row(kind: str, event: str, count: int, samples: dict, floor: str) -> dict:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "kind": kind,
        "event": event,
        "count": count,
        "ns_per_event": medians,
        "per_repeat_ns": samples,
        "ratio": {name: value / medians[floor] for name, value in medians.items()},
    }


def measure(events: int = 20000, repeats: int = 7, counts=COUNTS) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="trackmux-bench-dispatch-") as workdir:
        for count in counts:
            cases, _ = callback_cases(count, workdir)
            for event, functions in cases.items():
                samples = _median_runs(functions, events, repeats)
                rows.append(_row("callbacks", event, count, samples, "plain"))
        for count in counts:
            drained = _counting_tracker_class()
            with _queued([drained() for _ in range(count)]) as queues:
                hub, functions = tracker_cases(count, workdir, events, queues)
                rows.append(_tracker_row(hub, functions, count, events, repeats))
    return {"events": events, "repeats": repeats, "target_ratio": TARGET_RATIO, "rows": rows}


def _tracker_row(hub, functions: dict, count: int, events: int, repeats: int) -> dict:
    with hub.session("train"):
        for worker in hub.workers:  # the trackers' start() is not dispatch
            worker.flush(60)
        samples = _median_runs(functions, events, repeats)
    return _row("trackers", "on_log", count, samples, "plain")


def format_report(result: dict) -> str:
    header = (
        f"{'dispatch':<9} {'event':<11} {'n':>3}  {'plain ns':>9}  {'trackmux ns':>11} "
        f"{'ratio':>6}  other"
    )
    lines = [
        f"hook dispatch (median ns per event over {result['repeats']} repeats of "
        f"{result['events']} events)",
        header,
        "-" * len(header),
    ]
    for row in result["rows"]:
        ns, ratio = row["ns_per_event"], row["ratio"]
        mine = "trackmux" if row["kind"] == "callbacks" else "hub-loop"
        others = [
            f"{name} {ns[name]:.0f} ns ({ratio[name]:.2f}x)"
            for name in ns
            if name not in ("plain", mine)
        ]
        lines.append(
            f"{row['kind']:<9} {row['event']:<11} {row['count']:>3}  {ns['plain']:9.0f}  "
            f"{ns[mine]:11.0f} {ratio[mine]:6.2f}  {'; '.join(others)}"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20000, help="events per repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    options = parser.parse_args(argv)
    result = measure(options.events, options.repeats)
    print(json.dumps(result, indent=2) if options.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
