"""What the benchmark times: the models and data, the plain PyTorch loop that is the floor,
and the trackmux configurations measured against it.

Every contender trains the same model from the same initial weights on the same batches in
the same order (AdamW, gradient clipping at 1.0, linear schedule), and is timed between the
end of step ``warmup`` and the end of step ``warmup + steps``: setup, the first steps and
the closing of trackers are outside the window.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

LEARNING_RATE = 1e-3
MAX_GRAD_NORM = 1.0
SEED = 42
SLOW_TRACKER_DELAY = 0.05


# --------------------------------------------------------------------------- task


class BenchNet(nn.Module):
    """An MLP whose forward returns ``{"loss", "logits"}``, as trackmux models do."""

    def __init__(self, layers: tuple[int, ...], loss: str):
        super().__init__()
        modules: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(zip(layers, layers[1:])):
            if index:
                modules.append(nn.ReLU())
            modules.append(nn.Linear(width_in, width_out))
        self.net = nn.Sequential(*modules)
        self.loss = nn.functional.mse_loss if loss == "mse" else nn.functional.cross_entropy

    def forward(self, x, labels=None):
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": self.loss(logits, labels), "logits": logits}


class InMemoryDataset(Dataset):
    """Fixed tensors, one ``{"x", "labels"}`` dict per item (what a Hugging Face style
    dataset yields), so both loops pay the same collation cost."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor):
        self.x = x
        self.labels = labels

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.labels[index]}


@dataclass(frozen=True)
class Task:
    name: str
    layers: tuple[int, ...]
    batch_size: int
    loss: str  # "mse" (regression) or "cross_entropy" (classification)
    steps: int  # default timed steps per repeat
    warmup: int  # default untimed steps before the window

    def model(self, seed: int = SEED) -> BenchNet:
        torch.manual_seed(seed)
        return BenchNet(self.layers, self.loss)

    def dataset(self, batches: int, seed: int = SEED) -> InMemoryDataset:
        """Exactly ``batches`` full batches: one epoch covers the run, so no loop pays for
        an epoch boundary inside the window."""
        generator = torch.Generator().manual_seed(seed)
        size = batches * self.batch_size
        x = torch.randn(size, self.layers[0], generator=generator)
        if self.loss == "mse":
            labels = torch.randn(size, self.layers[-1], generator=generator)
        else:
            labels = torch.randint(0, self.layers[-1], (size,), generator=generator)
        return InMemoryDataset(x, labels)


TASKS = {
    # overhead-dominated: the step itself is tens of microseconds of math
    "tiny": Task("tiny", (8, 16, 1), batch_size=8, loss="mse", steps=500, warmup=50),
    # compute-dominated: milliseconds of matrix products per step
    "medium": Task(
        "medium", (512, 1024, 1024, 10), batch_size=64, loss="cross_entropy", steps=50, warmup=10
    ),
}


@dataclass(frozen=True)
class Window:
    """One timed run: ``warmup`` untimed steps, then ``steps`` timed ones."""

    steps: int
    warmup: int
    logging_steps: int
    seed: int = SEED

    @property
    def total(self) -> int:
        return self.warmup + self.steps


def default_device() -> torch.device:
    # the device trackmux's TrainingArguments picks by default
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- timing


class Stopwatch:
    """Marks the end of step ``window.warmup`` and of step ``window.total``. The functions
    in ``on_start`` run just before the clock starts, those in ``on_stop`` just after it
    stops (settling trackers, arming the slow tracker, switching a profiler on and off).
    With ``lap_every`` it also notes the time at the end of every ``lap_every``-th step
    (``laps``), for the as-a-user-meets-it mode's steady windows."""

    def __init__(self, window: Window, device: torch.device, lap_every: int = 0):
        self.window = window
        self.device = device
        self.lap_every = lap_every
        self.laps: list[float] = []
        self.on_start: list[Callable[[], None]] = []
        self.on_stop: list[Callable[[], None]] = []
        self.started: float | None = None
        self.stopped: float | None = None
        self.cpu_started = self.cpu_stopped = 0.0

    def mark(self, step: int) -> None:
        if step == self.window.warmup:
            synchronize(self.device)
            for function in self.on_start:
                function()
            self.started = time.perf_counter()
            self.cpu_started = time.thread_time()
        elif step == self.window.total:
            synchronize(self.device)
            self.stopped = time.perf_counter()
            self.cpu_stopped = time.thread_time()
            for function in self.on_stop:
                function()
        if self.lap_every and step % self.lap_every == 0:
            self.laps.append(time.perf_counter())

    @property
    def per_step(self) -> float:
        """Wall seconds per step."""
        if self.started is None or self.stopped is None:
            raise RuntimeError("the timing window was not reached: too few batches?")
        return (self.stopped - self.started) / self.window.steps

    @property
    def cpu_per_step(self) -> float:
        """CPU seconds per step of the training thread: blind to waiting, but also to the
        other processes that take the CPU away from it on a busy machine."""
        return (self.cpu_stopped - self.cpu_started) / self.window.steps


def _stopwatch_callback(stopwatch: Stopwatch):
    from trackmux import TrainerCallback

    class StopwatchCallback(TrainerCallback):
        # on_step_end fires after optimizer.step / scheduler.step / zero_grad and before the
        # step's logging: the plain loop marks the same point
        def on_step_end(self, args, state, control, **kwargs):
            stopwatch.mark(state.global_step)

    return StopwatchCallback()


# --------------------------------------------------------------------------- slow tracker


def slow_tracker():
    """A Tracker whose ``log_metrics`` takes 50 ms between ``arm()`` and ``release()``, like
    a backend on a slow network: slow inside the window only, so settling before it and
    closing after it take no time. ``calls`` counts every record delivered, to show none was
    dropped.
    """
    from trackmux import Tracker

    class SlowTracker(Tracker):
        name = "slow"

        def __init__(self, **settings):
            super().__init__(**settings)
            self.calls = 0
            self._fast = threading.Event()
            self._fast.set()

        def arm(self) -> None:
            self._fast.clear()

        def release(self) -> None:
            self._fast.set()

        def start(self, run):
            return {"run": run.name}

        def log_metrics(self, metrics, step, epoch=None):
            self._fast.wait(SLOW_TRACKER_DELAY)
            self.calls += 1

        def finish(self, status):
            pass

    return SlowTracker()


# --------------------------------------------------------------------------- contenders


@dataclass
class RunResult:
    per_step: float
    cpu_per_step: float
    info: dict = field(default_factory=dict)


@dataclass
class Contender:
    """``report_to`` is None for the plain loop and the peers; ``trackers`` names the tracker
    set a trackmux contender resolves to (used to skip duplicates); ``peer`` is
    "transformers" or "lightning" for another framework's trainer (``trackers`` then holds
    "tensorboard" when it logs to TensorBoard)."""

    name: str
    report_to: str | list[str] | None = None
    trackers: frozenset[str] = frozenset()
    slow: bool = False
    peer: str | None = None

    @property
    def plain(self) -> bool:
        return self.report_to is None and self.peer is None

    def run(
        self, task: Task, window: Window, workdir: str, profiler=None, settled: bool = True
    ) -> RunResult:
        if self.peer is not None:
            import peers

            run = peers.run_transformers if self.peer == "transformers" else peers.run_lightning
            return run(task, window, workdir, "tensorboard" in self.trackers, profiler)
        if self.plain:
            return run_plain(task, window, profiler=profiler)
        return run_trackmux(task, window, self.report_to, workdir, self.slow, profiler, settled)


def _with_profiler(stopwatch: Stopwatch, profiler) -> Stopwatch:
    # innermost: switched on last before the window and off first after it
    if profiler is not None:
        stopwatch.on_start.append(profiler.enable)
        stopwatch.on_stop.insert(0, profiler.disable)
    return stopwatch


def settle(trainer, timeout: float = 300.0) -> None:
    """Wait until every tracker delivered what it was given so far, its ``start()`` above
    all (mlflow creating its database takes seconds of CPU): the window then measures the
    steady state, not a tracker's start-up running beside the first steps."""
    for worker in trainer.trackers.workers:
        worker.flush(timeout)


def _loader(task: Task, window: Window) -> DataLoader:
    # the DataLoader trackmux builds: shuffled by a generator seeded with the seed (plus
    # the epoch, 0 here), default_collate, no workers
    return DataLoader(
        task.dataset(window.total, window.seed),
        batch_size=task.batch_size,
        shuffle=True,
        collate_fn=default_collate,
        num_workers=0,
        generator=torch.Generator().manual_seed(window.seed),
    )


def plain_model(
    task: Task, window: Window, profiler=None, lap_every: int = 0
) -> tuple[nn.Module, RunResult]:
    """The floor: the loop someone writes by hand, doing the same math as the Trainer.
    ``info["train_s"]`` is the whole loop's wall time, from building the loader and the
    optimizer (as ``Trainer.train()`` does) to the last step."""
    device = default_device()
    model = task.model(window.seed).to(device)
    began = time.perf_counter()
    loader = _loader(task, window)
    # one parameter group: with weight_decay=0 it is the same update as trackmux's two
    # (decay / no-decay) groups, and it is what a hand-written loop uses
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    total = window.total
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: max(0.0, 1.0 - step / total)
    )
    stopwatch = _with_profiler(Stopwatch(window, device, lap_every), profiler)
    running = torch.zeros((), device=device)
    logged = []

    # the step is a function (as in the Trainer) so that a profiler, switched on in the
    # middle of the loop, sees its work
    def train_step(batch) -> None:
        batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        loss = model(**batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running.add_(loss.detach())

    model.train()
    for step, batch in enumerate(loader, start=1):
        train_step(batch)
        stopwatch.mark(step)
        if step % window.logging_steps == 0:
            logged.append(running.item() / window.logging_steps)
            running.zero_()
        if step == total:
            break
    info = {
        "logged": len(logged),
        "train_s": time.perf_counter() - began,
        "began": began,
        "laps": stopwatch.laps,
    }
    return model, RunResult(stopwatch.per_step, stopwatch.cpu_per_step, info)


def run_plain(task: Task, window: Window, profiler=None) -> RunResult:
    return plain_model(task, window, profiler)[1]


def trackmux_model(
    task: Task,
    window: Window,
    report_to,
    workdir: str,
    slow: bool = False,
    profiler=None,
    settled: bool = True,
    lap_every: int = 0,
):
    """trackmux's Trainer on the task; ``info["train_s"]`` is the wall time of the whole
    ``trainer.train()`` call (opening and closing the trackers included)."""
    from trackmux import Trainer, TrainingArguments

    device = default_device()
    tracker = slow_tracker() if slow else None
    stopwatch = Stopwatch(window, device, lap_every)
    args = TrainingArguments(
        output_dir=workdir,
        report_to=list(report_to) if isinstance(report_to, list) else report_to,
        disable_tqdm=True,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=window.logging_steps,
        max_steps=window.total,
        per_device_train_batch_size=task.batch_size,
        dataloader_num_workers=0,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        optim="adamw_torch",  # the plain loop's torch.optim.AdamW (the default is fused)
        max_grad_norm=MAX_GRAD_NORM,
        lr_scheduler_type="linear",
        seed=window.seed,
    )
    trainer = Trainer(
        task.model(window.seed),
        args,
        train_dataset=task.dataset(window.total, window.seed),
        callbacks=[_stopwatch_callback(stopwatch)],
        trackers=[tracker] if tracker else None,
    )
    if settled:
        stopwatch.on_start.append(lambda: settle(trainer))
    if tracker is not None:
        stopwatch.on_start.append(tracker.arm)
        stopwatch.on_stop.append(tracker.release)
    _with_profiler(stopwatch, profiler)
    # disable_tqdm=True prints every log dict (PrinterCallback): that work is timed, but it
    # goes to /dev/null so the terminal's speed is not
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        began = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - began
    info = {
        "logged": len(trainer.state.log_history),
        # what report_to resolved to where it ran ("all" depends on the folder: dvclive
        # stays out of it inside a Git work tree)
        "trackers": [t.name for t in getattr(trainer.trackers, "trackers", ())],
        "train_s": elapsed,
        "began": began,
        "laps": stopwatch.laps,
    }
    if tracker is not None:
        info["delivered"] = tracker.calls
    return trainer.model, RunResult(stopwatch.per_step, stopwatch.cpu_per_step, info)


def run_trackmux(
    task: Task,
    window: Window,
    report_to,
    workdir: str,
    slow: bool = False,
    profiler=None,
    settled: bool = True,
) -> RunResult:
    return trackmux_model(task, window, report_to, workdir, slow, profiler, settled)[1]


def build_contenders(
    registry=None, extra=(), peers: bool = True
) -> tuple[list[Contender], list[tuple[str, str]]]:
    """The contenders this environment can run, and ``(name, why)`` for those skipped.
    ``extra``: more tracker sets to time, each a list of ``report_to`` names; ``peers``:
    also Hugging Face's Trainer and Lightning, where installed."""
    from trackmux.plugins import get_registry
    from trackmux.report_to import resolve

    registry = registry or get_registry()
    chosen = [
        Contender("plain"),
        Contender("trackmux-none", "none"),
        Contender("trackmux-jsonl", ["jsonl"], frozenset({"jsonl"})),
    ]
    skipped: list[tuple[str, str]] = []

    def add(names: list[str]) -> None:
        name = "trackmux-" + "+".join(names)
        absent = [n for n in names if not (registry.get(n) and registry.get(n).available)]
        same = next((c for c in chosen if c.trackers == frozenset(names)), None)
        if absent:
            skipped.append((name, f"not available: {', '.join(absent)}"))
        elif same is not None:
            skipped.append((name, f"same trackers as {same.name}"))
        else:
            chosen.append(Contender(name, names, frozenset(names)))

    add(["jsonl", "tensorboard"])
    add(["jsonl", "tensorboard", "mlflow", "dvclive"])
    everything = frozenset(info.name for info in resolve("all", registry).chosen)
    same = next((c for c in chosen if c.trackers == everything), None)
    if same is not None:
        skipped.append(("trackmux-all", f"same trackers as {same.name}"))
    else:
        chosen.append(Contender("trackmux-all", "all", everything))
    for names in extra:
        add(list(names))
    chosen.append(Contender("slow-tracker", "none", frozenset({"slow"}), slow=True))
    if peers:
        found, missing = peer_contenders()
        chosen += found
        skipped += missing
    return chosen, skipped


def peer_contenders() -> tuple[list[Contender], list[tuple[str, str]]]:
    """Hugging Face's Trainer and Lightning, each without a logger and with TensorBoard,
    where installed; ``(name, why)`` for the others."""
    import peers

    chosen, skipped = [], []
    for peer, missing in (
        ("transformers", peers.transformers_missing()),
        ("lightning", peers.lightning_missing()),
    ):
        for tensorboard in (False, True):
            name = f"{peer}+tensorboard" if tensorboard else peer
            why = missing or (peers.tensorboard_missing() if tensorboard else None)
            if why:
                skipped.append((name, why))
            else:
                trackers = frozenset({"tensorboard"}) if tensorboard else frozenset()
                chosen.append(Contender(name, trackers=trackers, peer=peer))
    return chosen, skipped
