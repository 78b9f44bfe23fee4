"""Every learning-rate schedule Hugging Face's ``lr_scheduler_type`` names, built without
transformers (trackmux does not depend on it).

Each schedule follows ``transformers.optimization`` step for step: the ``transformers`` test
session compares the learning rate of every step with transformers' own schedules.
``lr_scheduler_kwargs`` go to the schedule as transformers passes its
``scheduler_specific_kwargs`` (``num_cycles``, ``lr_end``/``power``, ``timescale``,
``min_lr``/``min_lr_rate``/``warmup_lr_rate``, the ``warmup_stable_decay`` phases, and
``torch.optim.lr_scheduler.ReduceLROnPlateau``'s or :class:`GreedyLR`'s arguments).

``reduce_lr_on_plateau`` and ``greedy`` react to a metric: the Trainer steps them after each
evaluation with ``metric_for_best_model`` (see :data:`METRIC_DRIVEN`), never per step.
"""

from __future__ import annotations

import functools
import math
from typing import Any

__all__ = ["METRIC_DRIVEN", "SCHEDULER_TYPES", "GreedyLR", "get_scheduler", "is_metric_driven"]

SCHEDULER_TYPES: tuple[str, ...] = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
"""Allowed values of ``TrainingArguments.lr_scheduler_type`` (transformers' ``SchedulerType``)."""

METRIC_DRIVEN: frozenset[str] = frozenset({"reduce_lr_on_plateau", "greedy"})
"""Schedules stepped with an evaluation metric instead of once per optimizer step."""


def _warmup(step: float, warmup_steps: float) -> float:
    return float(step) / float(max(1, warmup_steps))


def _linear(step, *, num_warmup_steps, num_training_steps):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    remaining = float(num_training_steps - step)
    return max(0.0, remaining / float(max(1, num_training_steps - num_warmup_steps)))


def _progress(step, num_warmup_steps, num_training_steps) -> float:
    return float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))


def _cosine(step, *, num_warmup_steps, num_training_steps, num_cycles=0.5, min_lr_rate=0.0):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = _progress(step, num_warmup_steps, num_training_steps)
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    if min_lr_rate:
        factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0.0, factor)


def _cosine_with_restarts(step, *, num_warmup_steps, num_training_steps, num_cycles=1):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = _progress(step, num_warmup_steps, num_training_steps)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def _polynomial(step, *, num_warmup_steps, num_training_steps, lr_end, power, lr_init):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    if step > num_training_steps:
        return lr_end / lr_init
    remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * remaining**power + lr_end) / lr_init


def _constant_with_warmup(step, *, num_warmup_steps):
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def _constant(step):
    return 1


def _inverse_sqrt(step, *, num_warmup_steps, timescale):
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    shift = timescale - num_warmup_steps
    return 1.0 / math.sqrt((step + shift) / timescale)


def _cosine_warmup_with_min_lr(
    step, *, num_warmup_steps, num_training_steps, num_cycles, min_lr_rate, warmup_lr_rate
):
    # transformers' variant that starts warmup above zero and counts the decay one step early
    step, warmup, total = float(step), float(num_warmup_steps), float(num_training_steps)
    if step < warmup:
        if warmup_lr_rate is None:
            return (step + 1.0) / max(1.0, warmup)
        rate = float(warmup_lr_rate)
        return rate + (1.0 - rate) * step / max(1, warmup - 1)
    progress = (step - warmup + 1.0) / max(1.0, total - warmup)
    factor = 0.5 * (1.0 + math.cos(math.pi * num_cycles * 2.0 * progress))
    return max(0, factor * (1 - min_lr_rate) + min_lr_rate)


_SHAPES = {"linear", "cosine", "1-sqrt"}


def _shape(kind: str, progress: float, num_cycles: float, rising: bool) -> float:
    if kind == "linear":
        return progress if rising else 1.0 - progress
    if kind == "cosine":
        if rising:
            return 0.5 * (1.0 - math.cos(math.pi * progress))
        return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    return 1.0 - math.sqrt(1.0 - progress) if rising else 1.0 - math.sqrt(progress)


def _warmup_stable_decay(
    step,
    *,
    num_warmup_steps,
    num_stable_steps,
    num_decay_steps,
    warmup_type,
    decay_type,
    min_lr_ratio,
    num_cycles,
):
    if step < num_warmup_steps:
        factor = _shape(warmup_type, _warmup(step, num_warmup_steps), num_cycles, rising=True)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < num_warmup_steps + num_stable_steps:
        return 1.0
    if step < num_warmup_steps + num_stable_steps + num_decay_steps:
        done = step - num_warmup_steps - num_stable_steps
        progress = float(done) / float(max(1, num_decay_steps))
        factor = _shape(decay_type, progress, num_cycles, rising=False)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


def _min_lr_rate(optimizer, min_lr, min_lr_rate, name: str) -> float:
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError(
            f"lr_scheduler_type={name!r}: lr_scheduler_kwargs sets both min_lr and "
            "min_lr_rate; set only one of them"
        )
    if min_lr is not None:
        return min_lr / optimizer.defaults["lr"]
    if min_lr_rate is None:
        raise ValueError(
            f"lr_scheduler_type={name!r} needs lr_scheduler_kwargs with min_lr (an absolute "
            "learning rate) or min_lr_rate (a fraction of learning_rate), e.g. "
            '{"min_lr_rate": 0.1}'
        )
    return min_lr_rate


def _lambdas(name: str, optimizer, warmup: int, total: int, kwargs: dict) -> Any:
    """The factor function of a step-driven schedule, with its kwargs bound."""
    kwargs = dict(kwargs)
    if name == "constant":
        return _constant
    if name == "constant_with_warmup":
        return functools.partial(_constant_with_warmup, num_warmup_steps=warmup)
    if name == "inverse_sqrt":
        timescale = kwargs.pop("timescale", None)
        if timescale is None:
            timescale = warmup or 10_000
        _no_other_kwargs(name, kwargs)
        return functools.partial(_inverse_sqrt, num_warmup_steps=warmup, timescale=timescale)
    if name == "warmup_stable_decay":
        return _wsd(warmup, total, kwargs)
    common = {"num_warmup_steps": warmup, "num_training_steps": total}
    if name == "linear":
        _no_other_kwargs(name, kwargs)
        return functools.partial(_linear, **common)
    if name == "cosine":
        common["num_cycles"] = kwargs.pop("num_cycles", 0.5)
        _no_other_kwargs(name, kwargs)
        return functools.partial(_cosine, **common)
    if name == "cosine_with_restarts":
        common["num_cycles"] = kwargs.pop("num_cycles", 1)
        _no_other_kwargs(name, kwargs)
        return functools.partial(_cosine_with_restarts, **common)
    if name == "polynomial":
        lr_init = optimizer.defaults["lr"]
        lr_end = kwargs.pop("lr_end", 1e-7)
        power = kwargs.pop("power", 1.0)
        _no_other_kwargs(name, kwargs)
        if not lr_init > lr_end:
            raise ValueError(
                f"lr_scheduler_type='polynomial': lr_end ({lr_end}) must be smaller than the "
                f"initial learning rate ({lr_init}); lower lr_scheduler_kwargs['lr_end']"
            )
        return functools.partial(_polynomial, **common, lr_end=lr_end, power=power, lr_init=lr_init)
    common["num_cycles"] = kwargs.pop("num_cycles", 0.5)
    common["min_lr_rate"] = _min_lr_rate(
        optimizer, kwargs.pop("min_lr", None), kwargs.pop("min_lr_rate", None), name
    )
    if name == "cosine_with_min_lr":
        _no_other_kwargs(name, kwargs)
        return functools.partial(_cosine, **common)
    common["warmup_lr_rate"] = kwargs.pop("warmup_lr_rate", None)
    _no_other_kwargs(name, kwargs)
    return functools.partial(_cosine_warmup_with_min_lr, **common)


def _wsd(warmup: int, total: int | None, kwargs: dict):
    name = "warmup_stable_decay"
    if "num_decay_steps" not in kwargs:
        raise ValueError(
            f"lr_scheduler_type={name!r} needs lr_scheduler_kwargs['num_decay_steps'] (the "
            'steps of the decay phase), e.g. {"num_decay_steps": 100}'
        )
    decay = kwargs.pop("num_decay_steps")
    stable = kwargs.pop("num_stable_steps", None)
    warmup_type = kwargs.pop("warmup_type", "linear")
    decay_type = kwargs.pop("decay_type", "cosine")
    options = {
        "min_lr_ratio": kwargs.pop("min_lr_ratio", 0),
        "num_cycles": kwargs.pop("num_cycles", 0.5),
    }
    _no_other_kwargs(name, kwargs)
    for label, kind in (("warmup_type", warmup_type), ("decay_type", decay_type)):
        if kind not in _SHAPES:
            raise ValueError(
                f"lr_scheduler_kwargs[{label!r}]={kind!r} is not allowed for {name!r}; "
                f"choose one of {sorted(_SHAPES)}"
            )
    if stable is None:
        stable = total - warmup - decay
    return functools.partial(
        _warmup_stable_decay,
        num_warmup_steps=warmup,
        num_stable_steps=stable,
        num_decay_steps=decay,
        warmup_type=warmup_type,
        decay_type=decay_type,
        **options,
    )


def _no_other_kwargs(name: str, kwargs: dict) -> None:
    if kwargs:
        raise TypeError(
            f"lr_scheduler_kwargs={kwargs!r}: lr_scheduler_type={name!r} takes no "
            f"{', '.join(map(repr, kwargs))}; remove them (or choose the schedule they belong to)"
        )


def get_scheduler(
    name: str,
    optimizer,
    num_warmup_steps: int,
    num_training_steps: int,
    scheduler_specific_kwargs: dict | None = None,
):
    """The schedule ``name`` (one of :data:`SCHEDULER_TYPES`) over ``optimizer``, as
    ``transformers.get_scheduler`` builds it: a ``LambdaLR`` for the step-driven schedules,
    ``ReduceLROnPlateau`` or :class:`GreedyLR` for the metric-driven ones. ``constant`` ignores
    warmup, as in transformers."""
    import torch

    if name not in SCHEDULER_TYPES:
        raise ValueError(
            f"lr_scheduler_type={name!r} is not supported; choose one of {list(SCHEDULER_TYPES)}"
        )
    kwargs = dict(scheduler_specific_kwargs or {})
    if name == "reduce_lr_on_plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **kwargs)
    if name == "greedy":
        return GreedyLR(optimizer, **kwargs)
    factor = _lambdas(name, optimizer, num_warmup_steps, num_training_steps, kwargs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def is_metric_driven(scheduler) -> bool:
    """Whether ``scheduler`` steps on a metric (``ReduceLROnPlateau``, :class:`GreedyLR`)
    rather than once per optimizer step."""
    return isinstance(scheduler, _metric_driven_classes())


@functools.cache
def _metric_driven_classes() -> tuple[type, ...]:
    # asked once per optimizer step: torch is imported (lazily) and the tuple built once
    import torch

    return (torch.optim.lr_scheduler.ReduceLROnPlateau, GreedyLR)


class _StreamingAverage:
    """Mean of the last ``window_size`` values (GreedyLR's optional smoothing)."""

    def __init__(self, window_size: int) -> None:
        self.window_size = window_size
        self.values: list[float] = []
        self.sum = 0.0

    def streamavg(self, value: float) -> float:
        self.values.append(value)
        self.sum += value
        if len(self.values) > self.window_size:
            self.sum -= self.values.pop(0)
        return self.sum / len(self.values)

    def state_dict(self) -> dict[str, Any]:
        return {"window_size": self.window_size, "values": list(self.values), "sum": self.sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window_size = state.get("window_size", self.window_size)
        self.values = list(state.get("values", []))
        self.sum = state.get("sum", 0.0)


class GreedyLR:
    """transformers' ``greedy`` schedule (arXiv:2512.14527): after ``patience`` evaluations
    that improve the metric the learning rate is divided by ``factor``, after ``patience``
    that do not it is multiplied by it, within ``[min_lr, max_lr]``; ``reset_start``
    reductions spent at ``min_lr`` restore the initial rates. Same arguments, behaviour and
    ``state_dict`` keys as transformers' ``GreedyLR``, so its checkpoints cross over."""

    _STATE = (
        "factor",
        "min_lrs",
        "max_lrs",
        "patience",
        "verbose",
        "cooldown",
        "warmup",
        "cooldown_counter",
        "warmup_counter",
        "mode",
        "threshold",
        "threshold_mode",
        "best",
        "num_bad_epochs",
        "num_good_epochs",
        "eps",
        "last_epoch",
        "smooth",
        "window_size",
        "reset_start",
        "reset_start_original",
        "_last_lr",
        "_init_lrs",
    )

    def __init__(
        self,
        optimizer,
        mode: str = "min",
        factor: float = 0.95,
        patience: int = 10,
        threshold: float = 1e-6,
        threshold_mode: str = "abs",
        cooldown: int = 0,
        warmup: int = 0,
        min_lr: float | list[float] = 1e-3,
        max_lr: float | list[float] = 1.0,
        eps: float = 1e-8,
        verbose: bool = False,
        smooth: bool = False,
        window_size: int = 50,
        reset_start: int = 500,
    ) -> None:
        if factor >= 1.0:
            raise ValueError(f"greedy: lr_scheduler_kwargs factor={factor!r} must be < 1.0")
        if mode not in ("min", "max"):
            raise ValueError(f"greedy: lr_scheduler_kwargs mode={mode!r}; use 'min' or 'max'")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"greedy: lr_scheduler_kwargs threshold_mode={threshold_mode!r}; use 'rel' or 'abs'"
            )
        self.optimizer = optimizer
        groups = len(optimizer.param_groups)
        self.min_lrs = self._per_group(min_lr, groups, "min_lr")
        self.max_lrs = self._per_group(max_lr, groups, "max_lr")
        self.factor, self.patience, self.verbose = factor, patience, verbose
        self.cooldown, self.warmup = cooldown, warmup
        self.cooldown_counter = self.warmup_counter = 0
        self.mode, self.threshold, self.threshold_mode = mode, threshold, threshold_mode
        self.eps, self.smooth, self.window_size = eps, smooth, window_size
        self.reset_start = self.reset_start_original = reset_start
        self.last_epoch = 0
        self._init_lrs = [group["lr"] for group in optimizer.param_groups]
        self._last_lr = list(self._init_lrs)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = self.num_good_epochs = 0
        self._streaming_avg = _StreamingAverage(window_size) if smooth else None

    @staticmethod
    def _per_group(value, groups: int, name: str) -> list[float]:
        if isinstance(value, list | tuple):
            if len(value) != groups:
                raise ValueError(f"greedy: expected {groups} values of {name}, got {len(value)}")
            return list(value)
        return [value] * groups

    def step(self, metrics: float, epoch: int | None = None) -> None:
        current = float(metrics)
        if self._streaming_avg is not None:
            current = self._streaming_avg.streamavg(current)
        self.last_epoch = epoch = self.last_epoch + 1 if epoch is None else epoch
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = self.num_good_epochs = 0
        elif self.warmup_counter > 0:
            self.warmup_counter -= 1
            self.num_bad_epochs = self.num_good_epochs = 0
        else:
            if self.is_better(current, self.best):
                self.best = current
                self.num_bad_epochs = 0
                self.num_good_epochs += 1
            else:
                self.num_bad_epochs += 1
                self.num_good_epochs = 0
            if self.num_good_epochs > self.patience:
                self._increase_lr()
                self.warmup_counter = self.warmup
                self.num_good_epochs = 0
            elif self.num_bad_epochs > self.patience:
                self._reduce_lr()
                self.cooldown_counter = self.cooldown
                self.num_bad_epochs = 0
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def is_better(self, current: float, best: float) -> bool:
        relative = self.threshold_mode == "rel"
        if self.mode == "min":
            return current < (best * (1.0 - self.threshold) if relative else best - self.threshold)
        return current > (best * (1.0 + self.threshold) if relative else best + self.threshold)

    def _reduce_lr(self) -> None:
        all_at_min = True
        for index, group in enumerate(self.optimizer.param_groups):
            old = float(group["lr"])
            new = max(old * self.factor, self.min_lrs[index])
            if old - new > self.eps:
                group["lr"] = new
            if group["lr"] > self.min_lrs[index]:
                all_at_min = False
        if all_at_min:
            self.reset_start -= 1
            if self.reset_start <= 0:
                self._reset()

    def _increase_lr(self) -> None:
        for index, group in enumerate(self.optimizer.param_groups):
            old = float(group["lr"])
            new = min(old / self.factor, self.max_lrs[index])
            if new - old > self.eps:
                group["lr"] = new
        self.reset_start = self.reset_start_original

    def _reset(self) -> None:
        for index, group in enumerate(self.optimizer.param_groups):
            group["lr"] = self._init_lrs[index]
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = self.num_good_epochs = 0
        self.cooldown_counter = self.warmup_counter = 0
        self.reset_start = self.reset_start_original
        if self._streaming_avg is not None:
            self._streaming_avg = _StreamingAverage(self.window_size)

    def get_last_lr(self) -> list[float]:
        return self._last_lr

    def state_dict(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self._STATE}
        if self._streaming_avg is not None:
            state["_streaming_avg"] = self._streaming_avg.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self._STATE:
            setattr(self, name, state.get(name, getattr(self, name)))
        if "_streaming_avg" in state:
            if self._streaming_avg is None:
                self._streaming_avg = _StreamingAverage(self.window_size)
            self._streaming_avg.load_state_dict(state["_streaming_avg"])
        if "_last_lr" in state:
            for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=False):
                group["lr"] = lr
