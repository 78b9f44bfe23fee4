"""The callback API Hugging Face users know, bridged onto the pluggy event protocol.

A ``TrainerCallback`` overrides ``on_<event>(self, args, state, control, **kwargs)``. The
``CallbackHandler`` keeps the callbacks in order and is registered in the Trainer's plugin
manager as one pluggy plugin, so every event reaches callbacks and plugins alike through the
same hook call. pluggy passes only declared arguments, so the handler hands the objects of the
moment back to each callback as ``**kwargs``.
"""

from __future__ import annotations

import inspect
import logging
import math
import operator

from . import hookspecs
from .trainer_state import ExportableState, TrainerControl, TrainerState

logger = logging.getLogger(__name__)

EVENTS = (
    "on_init_end",
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_step_begin",
    "on_substep_end",
    "on_pre_optimizer_step",
    "on_optimizer_step",
    "on_step_end",
    "on_evaluate",
    "on_predict",
    "on_prediction_step",
    "on_save",
    "on_log",
    "on_exception",
)


class TrainerCallback:
    """Base class for callbacks: every event is a no-op method; override the ones you need.

    Each method receives ``args`` (TrainingArguments), ``state`` (TrainerState), ``control``
    (TrainerControl) and, in ``**kwargs``, the objects of the moment: ``model``,
    ``processing_class``, ``optimizer``, ``lr_scheduler``, ``train_dataloader``,
    ``eval_dataloader``, plus ``logs`` (on_log), ``metrics`` (on_evaluate, on_predict) and
    ``exception`` (on_exception). Steer the loop by setting ``control`` flags, or by returning
    a ``TrainerControl``. The events are documented in :mod:`trackmux.hookspecs`.
    """

    def on_init_end(self, args, state, control, **kwargs):
        pass

    def on_train_begin(self, args, state, control, **kwargs):
        pass

    def on_train_end(self, args, state, control, **kwargs):
        pass

    def on_epoch_begin(self, args, state, control, **kwargs):
        pass

    def on_epoch_end(self, args, state, control, **kwargs):
        pass

    def on_step_begin(self, args, state, control, **kwargs):
        pass

    def on_substep_end(self, args, state, control, **kwargs):
        pass

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        pass

    def on_optimizer_step(self, args, state, control, **kwargs):
        pass

    def on_step_end(self, args, state, control, **kwargs):
        pass

    def on_evaluate(self, args, state, control, **kwargs):
        pass

    def on_predict(self, args, state, control, metrics, **kwargs):
        pass

    def on_prediction_step(self, args, state, control, **kwargs):
        pass

    def on_save(self, args, state, control, **kwargs):
        pass

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass

    def on_exception(self, args, state, control, **kwargs):
        pass


def _overrides(callback: TrainerCallback, event: str) -> bool:
    method = getattr(type(callback), event, None)
    return method is not None and method is not getattr(TrainerCallback, event)


def _forwarder(event: str):
    """Build the pluggy implementation of ``event`` that forwards to the callbacks.

    pluggy reads an implementation's argument names from its code object, so the function is
    generated with exactly the hookspec's arguments (as ``dataclasses`` generates __init__).
    """
    spec_args = pluggy_argnames(getattr(hookspecs, event))
    objects = [name for name in spec_args if name not in ("args", "state", "control")]
    source = (
        f"def {event}(self, {', '.join(spec_args)}):\n"
        f"    return self.call_event({event!r}, args, state, control, "
        f"{{{', '.join(f'{name!r}: {name}' for name in objects)}}})\n"
    )
    namespace: dict = {}
    exec(source, namespace)  # noqa: S102 - source is built from our own hookspec names
    return hookspecs.hookimpl(tryfirst=True)(namespace[event])


def pluggy_argnames(function) -> tuple[str, ...]:
    return tuple(inspect.signature(function).parameters)


class CallbackHandler:
    """Keeps the Trainer's callbacks in order and calls them for every event.

    Registered in the plugin manager through :meth:`as_plugin`, which exposes an
    implementation only for the events some callback overrides, so an event nobody listens to
    costs nothing.
    """

    def __init__(self, callbacks=()):
        self.callbacks: list[TrainerCallback] = []
        self._listeners: dict[str, list] = {}
        for callback in callbacks:
            self.add_callback(callback)
        if not any(isinstance(cb, DefaultFlowCallback) for cb in self.callbacks):
            logger.warning(
                "The Trainer has no DefaultFlowCallback: it will not log, evaluate, save or "
                "stop on its own. Callbacks: %s",
                self.callback_list,
            )

    @property
    def callback_list(self) -> str:
        return "\n".join(type(cb).__name__ for cb in self.callbacks)

    def add_callback(self, callback) -> None:
        instance = callback() if isinstance(callback, type) else callback
        if not hasattr(instance, "on_train_begin"):
            raise TypeError(
                f"callbacks: {callback!r} is not a TrainerCallback; pass a TrainerCallback "
                "subclass or an instance of one"
            )
        cls = type(instance)
        if any(type(cb) is cls for cb in self.callbacks):
            logger.warning(
                "You are adding a %s to the callbacks of this Trainer, but there is already "
                "one. The current list of callbacks is:\n%s",
                cls.__name__,
                self.callback_list,
            )
        self.callbacks.append(instance)
        self._refresh()

    def pop_callback(self, callback):
        """Remove and return a callback given by class (the first instance of it) or by
        instance; ``None`` when there is no such callback."""
        found = self._find(callback)
        if found is not None:
            self.callbacks.remove(found)
            self._refresh()
        return found

    def remove_callback(self, callback) -> None:
        """Remove a callback given by class (the first instance of it) or by instance."""
        found = self._find(callback)
        if found is None:
            hint = (
                f"; to remove any {type(callback).__name__}, pass the class: "
                f"remove_callback({type(callback).__name__})"
                if not isinstance(callback, type)
                else ""
            )
            raise ValueError(
                f"remove_callback: {callback!r} is not among this Trainer's callbacks "
                f"({', '.join(type(cb).__name__ for cb in self.callbacks)}){hint}"
            )
        self.callbacks.remove(found)
        self._refresh()

    def _find(self, callback):
        if isinstance(callback, type):
            return next((cb for cb in self.callbacks if isinstance(cb, callback)), None)
        return next((cb for cb in self.callbacks if cb is callback), None)

    def _refresh(self) -> None:
        self._listeners = {
            event: [getattr(cb, event) for cb in self.callbacks if _overrides(cb, event)]
            for event in EVENTS
        }

    def listened_events(self) -> list[str]:
        return [event for event, methods in self._listeners.items() if methods]

    def call_event(self, event, args, state, control, objects):
        for method in self._listeners[event]:
            result = method(args, state, control, **objects)
            if isinstance(result, TrainerControl):
                control = result
        return control

    def as_plugin(self):
        """A pluggy plugin exposing one implementation per event some callback listens to."""
        bridge = type(
            "CallbackBridge",
            (),
            {event: _FORWARDERS[event] for event in self.listened_events()},
        )()
        bridge.call_event = self.call_event
        return bridge


_FORWARDERS = {event: _forwarder(event) for event in EVENTS}


class DefaultFlowCallback(TrainerCallback):
    """Decides when to log, evaluate, save and stop, from the TrainingArguments strategies.

    On top of Hugging Face's rules, the last step is always logged when the logging strategy
    is "steps", so the final loss is never missing from a tracker; not with
    ``TrainingArguments.transformers_flow``, which keeps transformers' rules exactly.
    """

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == "steps" and step % state.logging_steps == 0:
            control.should_log = True
        delayed = step < getattr(args, "eval_delay", 0)  # eval_delay: no evaluation before it
        evaluate_now = args.eval_strategy == "steps" and step % state.eval_steps == 0
        if evaluate_now and not delayed:
            control.should_evaluate = True
        if args.save_strategy == "steps" and state.save_steps > 0 and step % state.save_steps == 0:
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if args.logging_strategy == "steps" and not getattr(args, "transformers_flow", False):
                control.should_log = True
            if args.eval_strategy == "steps" and not delayed:
                control.should_evaluate = True
            if args.save_strategy == "steps":
                control.should_save = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "epoch":
            control.should_log = True
        if args.eval_strategy == "epoch" and getattr(args, "eval_delay", 0) <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == "epoch":
            control.should_save = True
        return control


#: significant digits of a float in a printed log dict
SHOWN_DIGITS = 4


def _rounded(value):
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SHOWN_DIGITS}g}")
    return value


def _format_logs(logs: dict) -> dict:
    """A log dict as printed: floats rounded to a few significant digits (the run log and
    the trackers keep every digit), ``total_flos`` left out."""
    shown = {key: _rounded(value) for key, value in logs.items() if key != "total_flos"}
    if "epoch" in shown and isinstance(shown["epoch"], float):
        shown["epoch"] = round(shown["epoch"], 2)
    return shown


def _log_lines(shown: dict, width: int) -> list[str]:
    """``shown`` as one line, or as several lines broken between entries when it is wider
    than ``width``: never cut inside a name or a number."""
    text = str(shown)
    if len(text) <= width:
        return [text]
    lines, line = [], "{"
    items = [f"{key!r}: {value!r}" for key, value in shown.items()]
    for index, item in enumerate(items):
        item += "}" if index == len(items) - 1 else ","
        if len(line) > 1 and len(line) + 1 + len(item) > width:
            lines.append(line)
            line = " " + item
        else:
            line += item if len(line) <= 1 else " " + item
    lines.append(line)
    return lines


class PrinterCallback(TrainerCallback):
    """Prints every log dict; used instead of the progress bars when ``disable_tqdm``."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs:
            print(_format_logs(logs), flush=True)


class ProgressCallback(TrainerCallback):
    """tqdm progress bars for training and evaluation; log dicts are written above the bar.

    While the training bar is shown, everything printed to the terminal (trackmux's lines, a
    tracker backend's, warnings) goes above it, never onto it (:mod:`trackmux._console`).
    Log dicts are shown rounded, broken between entries at ``max_str_len`` characters.
    ``postfix`` shows the last logged values, so a glance at the bar tells how training goes.
    """

    def __init__(self, max_str_len: int = 100):
        self.training_bar = None
        self.prediction_bar = None
        self.max_str_len = max_str_len
        self._shown_step = 0
        self._console = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            from ._console import BarConsole

            self.training_bar = tqdm(
                total=state.max_steps, initial=state.global_step, dynamic_ncols=True
            )
            self._shown_step = state.global_step
            self._console = BarConsole(self.training_bar).start()

    def on_step_end(self, args, state, control, **kwargs):
        if self.training_bar is not None:
            self.training_bar.update(state.global_step - self._shown_step)
            self._shown_step = state.global_step

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if not state.is_world_process_zero or eval_dataloader is None:
            return
        if self.prediction_bar is None:
            from tqdm.auto import tqdm

            total = len(eval_dataloader) if hasattr(eval_dataloader, "__len__") else None
            # the terminal itself, not the stream that writes above the training bar
            stream = self._console.stderr if self._console is not None else None
            self.prediction_bar = tqdm(
                total=total, leave=self.training_bar is None, dynamic_ncols=True, file=stream
            )
        self.prediction_bar.update(1)

    def _close_prediction_bar(self):
        if self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def on_evaluate(self, args, state, control, **kwargs):
        self._close_prediction_bar()

    def on_predict(self, args, state, control, metrics=None, **kwargs):
        self._close_prediction_bar()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = _format_logs(logs)
        text = "\n".join(_log_lines(shown, self.max_str_len))
        if self._console is not None:
            self._console.write(text)
        else:
            print(text, flush=True)
        if self.training_bar is not None:
            numeric = {
                k: v for k, v in shown.items() if isinstance(v, int | float) and k != "epoch"
            }
            if "loss" in numeric:  # the bar shows the latest training values only
                self.training_bar.set_postfix(numeric, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        self._close_training_bar()

    def show_tracker_wait(self, tracker: str | None, pending: int) -> None:
        """Back-pressure, visible: while the loop waits for room in ``tracker``'s queue the
        bar says so; ``tracker=None`` when the wait is over."""
        if self.training_bar is None:
            return
        if tracker is None:
            self.training_bar.set_description_str("", refresh=True)
        else:
            self.training_bar.set_description_str(
                f"waiting for tracker {tracker} ({pending} queued)", refresh=True
            )

    def on_exception(self, args, state, control, **kwargs):
        self._close_prediction_bar()
        self._close_training_bar()

    def _close_training_bar(self):
        if self._console is not None:
            self._console.stop()
            self._console = None
        if self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Stops training when ``metric_for_best_model`` has not improved for
    ``early_stopping_patience`` evaluations.

    An evaluation counts as an improvement when the metric beats ``state.best_metric`` in the
    direction of ``greater_is_better`` by more than ``early_stopping_threshold``. The counter is
    saved with every checkpoint, so a resumed run keeps its patience.
    """

    def __init__(self, early_stopping_patience: int = 1, early_stopping_threshold: float = 0.0):
        if not isinstance(early_stopping_patience, int) or early_stopping_patience < 1:
            raise ValueError(
                f"EarlyStoppingCallback.early_stopping_patience={early_stopping_patience!r} "
                "must be an integer >= 1 (the number of evaluations without improvement)"
            )
        if early_stopping_threshold < 0:
            raise ValueError(
                f"EarlyStoppingCallback.early_stopping_threshold={early_stopping_threshold!r} "
                "must be >= 0"
            )
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        self.early_stopping_patience_counter = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if not args.metric_for_best_model:
            raise ValueError(
                "EarlyStoppingCallback needs TrainingArguments.metric_for_best_model (for "
                "example metric_for_best_model='eval_loss'); it is None"
            )
        if args.eval_strategy == "no":
            raise ValueError(
                "EarlyStoppingCallback needs evaluations: TrainingArguments.eval_strategy is "
                "'no'; set eval_strategy='steps' (with eval_steps) or 'epoch'"
            )
        if not args.load_best_model_at_end:
            logger.info(
                "EarlyStoppingCallback without load_best_model_at_end keeps the last model, "
                "not the best one"
            )

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        name = args.metric_for_best_model
        if not name.startswith("eval_"):
            name = f"eval_{name}"
        value = (metrics or {}).get(name)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            logger.warning(
                "EarlyStoppingCallback: metric %r not found in the evaluation metrics (%s); "
                "early stopping is disabled for this evaluation",
                name,
                ", ".join(sorted(metrics or {})),
            )
            return
        better = operator.gt if args.greater_is_better else operator.lt
        if state.best_metric is None or (
            better(value, state.best_metric)
            and abs(value - state.best_metric) > self.early_stopping_threshold
        ):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict:
        return {
            "args": {
                "early_stopping_patience": self.early_stopping_patience,
                "early_stopping_threshold": self.early_stopping_threshold,
            },
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }


__all__ = [
    "CallbackHandler",
    "DefaultFlowCallback",
    "EarlyStoppingCallback",
    "EVENTS",
    "PrinterCallback",
    "ProgressCallback",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
]
