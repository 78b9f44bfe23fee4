"""The Trainer: a small PyTorch training loop whose every event goes through the pluggy
protocol of :mod:`trackmux.hookspecs`.

Change the loop by subclassing: ``get_train_dataloader``, ``get_eval_dataloader``,
``create_optimizer``, ``create_scheduler``, ``compute_loss``, ``training_step`` and
``prediction_step`` are the documented extension points.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import logging
import math
import os
import tempfile
import time
from collections.abc import Mapping

import pluggy
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate
from torch.utils.data.distributed import DistributedSampler

from . import hookspecs
from .distributed import DistributedContext
from .interrupts import InterruptMethods, Terminated, _Interrupts
from .loss_window import LossWindow
from .lr_schedules import get_scheduler, is_metric_driven
from .optimizers import create_optimizer
from .prediction_loop import PredictionLoop
from .trainer_callback import (
    CallbackHandler,
    DefaultFlowCallback,
    PrinterCallback,
    ProgressCallback,
)
from .trainer_checkpoints import CheckpointMethods
from .trainer_compat import (
    TransformersMethods,
    apply_runtime_options,
    compile_model,
    dataloader_options,
    ddp_options,
)
from .trainer_state import TrainerControl, TrainerState
from .trainer_utils import (
    NonFiniteLossError,
    TrainOutput,
    get_last_checkpoint,
    set_seed,
)
from .training_args import TRUTHY_ENV_VALUES, TrainingArguments

logger = logging.getLogger(__name__)

#: an event only the Trainer's callbacks listen to: dispatched by the CallbackHandler alone
_CALLBACKS_ONLY = object()
#: reusable (nullcontext keeps no state): one fewer object per step without mixed precision
_NO_AUTOCAST = contextlib.nullcontext()


class _ContiguousShardSampler(Sampler):
    """Evaluation sharding, as a batch sampler: rank r reads one contiguous slice, padded with
    repeats of the last sample to the same length on every rank, so gathering the ranks'
    outputs in rank order and cutting at the dataset length restores the dataset order.
    The padding comes in batches of its own after the ``real_batches``, so the loss can leave
    it out."""

    def __init__(self, length: int, world_size: int, rank: int, batch_size: int):
        per_rank = math.ceil(length / world_size)
        start = min(rank * per_rank, length)
        real = list(range(start, min(start + per_rank, length)))
        padding = [length - 1] * (per_rank - len(real))
        real_batches = [real[i : i + batch_size] for i in range(0, len(real), batch_size)]
        padding_batches = [padding[i : i + batch_size] for i in range(0, len(padding), batch_size)]
        self.real_batches = len(real_batches)
        self.batches = real_batches + padding_batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


class _EpochSeededSampler(Sampler):
    """Shuffling as transformers does it (accelerate's seedable sampler): epoch ``e`` is
    ``randperm(n)`` of a generator seeded with ``seed + e``, drawn when iteration starts."""

    def __init__(self, dataset, seed: int):
        self.length = len(dataset)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self):
        return self.length


class _RemoveColumns:
    """A collator wrapper that drops the keys of dict samples the model cannot take (a
    class, not a closure: DataLoader workers may need to pickle it)."""

    def __init__(self, collator, keep: frozenset):
        self.collator = collator
        self.keep = keep
        # torch's default_collate only reads the samples, so those that keep every key can
        # go to it as they are; another collator may pop keys (transformers' examples do)
        # and gets copies, never the dataset's own items
        self._reads_only = collator is default_collate

    def __call__(self, samples):
        keep = self.keep
        # (a dict subclass is copied: the batch is then a plain dict, as it always was)
        if self._reads_only and all(
            sample.keys() <= keep if type(sample) is dict else not isinstance(sample, dict)
            for sample in samples
        ):
            return self.collator(samples)
        samples = [
            (
                dict(sample)  # a copy in C: a comprehension costs microseconds per batch
                if sample.keys() <= keep
                else {k: v for k, v in sample.items() if k in keep}
            )
            if isinstance(sample, dict)
            else sample
            for sample in samples
        ]
        return self.collator(samples)


def _one_ahead(iterator):
    """Yield ``iterator``'s items, each fetched once the one before it was: transformers'
    data loader reads one batch ahead, so a collator that draws random numbers (masking)
    draws them in the same order as there."""
    try:
        current = next(iterator)
    except StopIteration:
        return
    for following in iterator:
        yield current
        current = following
    yield current


class Trainer(PredictionLoop, CheckpointMethods, InterruptMethods, TransformersMethods):
    """Train, evaluate and predict with a PyTorch model, emitting every event to callbacks,
    plugins and trackers.

    This module holds the set-up, the data loaders, the loss path, the training loop and the
    events; the Trainer's other jobs are mixins, each in a module of its own:
    :class:`~trackmux.prediction_loop.PredictionLoop` (``evaluate``, ``predict``,
    ``prediction_step``), :class:`~trackmux.trainer_checkpoints.CheckpointMethods`
    (``save_model``, writing and resuming checkpoints; the on-disk format is
    :mod:`trackmux.checkpoints`), :class:`~trackmux.interrupts.InterruptMethods` (Ctrl-C and
    SIGTERM, ``save_on_interrupt``) and :class:`~trackmux.trainer_compat.TransformersMethods`
    (transformers' methods around ``train()``).

    Args:
        model: a ``torch.nn.Module`` whose forward returns the loss in a dict (``"loss"``),
            a tuple (first item), an object (``.loss``) or as a plain tensor.
        args: the :class:`TrainingArguments` (default: ``TrainingArguments()``).
        data_collator: turns a list of samples into a batch (default: torch's
            ``default_collate``).
        train_dataset, eval_dataset: map-style datasets (or an iterable dataset with
            ``max_steps``).
        processing_class: tokenizer / processor, passed through to hooks and saved with
            checkpoints when it has ``save_pretrained``.
        compute_metrics: ``EvalPrediction -> dict`` of metrics, called after each evaluation.
        callbacks: ``TrainerCallback`` classes or instances, added after the flow callback.
        optimizers: ``(optimizer, lr_scheduler)`` to use instead of those of ``optim`` and
            ``lr_scheduler_type``.
        trackers: ``Tracker`` instances to report to, on top of those ``report_to`` selects.
        tracker_config: per-tracker settings, e.g. ``{"mlflow": {"experiment_name": "x"}}``;
            they win over the environment variables each plugin reads.
        hyperparameters: extra values recorded in every tracker's run config.
    """

    def __init__(
        self,
        model=None,
        args: TrainingArguments | None = None,
        data_collator=None,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | dict | None = None,
        processing_class=None,
        compute_metrics=None,
        callbacks=None,
        optimizers=(None, None),
        trackers=None,
        tracker_config: dict | None = None,
        hyperparameters: dict | None = None,
    ):
        if model is None:
            raise ValueError("Trainer: model is required (a torch.nn.Module)")
        self.args = args if args is not None else TrainingArguments()
        self.args.validate()
        set_seed(self.args.seed)
        self.distributed = DistributedContext.from_env()
        self.device = self.args.device
        self.distributed.initialise(self.device, self.args.ddp_backend, self.args.ddp_timeout)

        self.model = model.to(self.device)
        apply_runtime_options(self)
        self.model_wrapped = self.model
        self.data_collator = data_collator if data_collator is not None else default_collate
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.processing_class = processing_class
        self.compute_metrics = compute_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.train_dataloader = None
        self.eval_dataloader = None
        self.hyperparameters = dict(hyperparameters or {})
        self.tracker_config = dict(tracker_config or {})
        self._explicit_trackers = list(trackers or [])
        self._tracker_hub = None
        self._interrupts: _Interrupts | None = None  # while train() runs on the main thread
        self._holding_step = False
        self._autocast_dtype, self.scaler = self._mixed_precision()
        self._inspect_model()
        self._transformers_flow = self.args.transformers_flow
        self._num_items_in_batch = None  # set per optimizer step, see compute_loss
        self._rng_file: str | None = None  # the RNG state a resume restores, see _restore_rng

        self.state = TrainerState(
            is_local_process_zero=self.distributed.is_local_zero,
            is_world_process_zero=self.distributed.is_world_zero,
        )
        self.control = TrainerControl()
        progress = PrinterCallback if self.args.disable_tqdm else ProgressCallback
        self.callback_handler = CallbackHandler([DefaultFlowCallback, *(callbacks or []), progress])
        self.plugin_manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.plugin_manager.add_hookspecs(hookspecs)
        self._tracing = (
            os.environ.get("TRACKMUX_TRACE_HOOKS", "").strip().lower() in TRUTHY_ENV_VALUES
        )
        if self._tracing:
            self.plugin_manager.trace.root.setwriter(print)
            self.plugin_manager.enable_tracing()
        self._callback_plugin = None
        self._refresh_hooks()
        self._event("on_init_end")

    def _inspect_model(self) -> None:
        """What transformers reads off the model's ``forward``: the label names (its
        arguments with "label" in the name, unless ``args.label_names`` says), whether it
        returns a loss without labels (``return_loss=True``), whether it takes ``**kwargs``
        (then it gets ``num_items_in_batch``)."""
        try:
            parameters = inspect.signature(type(self.model).forward).parameters
        except (TypeError, ValueError):  # a forward without a signature (a C extension)
            parameters = {}
        self._forward_parameters = list(parameters)
        names = self.args.label_names
        if names is None:
            question_answering = "QuestionAnswering" in type(self.model).__name__
            answers = ("start_positions", "end_positions") if question_answering else ()
            names = [p for p in parameters if "label" in p or p in answers]
        self.label_names = list(names)
        return_loss = parameters.get("return_loss")
        self._can_return_loss = return_loss is not None and return_loss.default is True
        accepts = getattr(self.model, "accepts_loss_kwargs", None)
        if accepts is None:
            accepts = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self._model_accepts_loss_kwargs = bool(accepts)

    # ----------------------------------------------------------------- events and callbacks

    def add_callback(self, callback) -> None:
        """Add a callback (class or instance) after the existing ones."""
        self.callback_handler.add_callback(callback)
        self._refresh_hooks()

    def pop_callback(self, callback):
        """Remove a callback (class or instance) and return it, or None if absent."""
        found = self.callback_handler.pop_callback(callback)
        self._refresh_hooks()
        return found

    def remove_callback(self, callback) -> None:
        """Remove a callback given by class (first instance) or by instance."""
        self.callback_handler.remove_callback(callback)
        self._refresh_hooks()

    def register_plugin(self, plugin, name: str | None = None):
        """Register a pluggy plugin (an object or module with ``@hookimpl`` functions)."""
        registered = self.plugin_manager.register(plugin, name=name)
        self._refresh_hooks()
        return registered

    def unregister_plugin(self, plugin) -> None:
        self.plugin_manager.unregister(plugin)
        self._refresh_hooks()

    def _refresh_hooks(self) -> None:
        """Re-register the callbacks' bridge and work out how each event is dispatched: not
        at all when nobody implements it, straight to the callbacks when they are its only
        listeners, else to the implementations in pluggy's order (through pluggy itself
        when tracing or when a wrapper is involved). pluggy's own call machinery costs
        several microseconds per event; this keeps an event within a plain loop's cost."""
        if self._callback_plugin is not None:
            self.plugin_manager.unregister(self._callback_plugin)
        self._callback_plugin = self.callback_handler.as_plugin()
        self.plugin_manager.register(self._callback_plugin, name="trackmux.callbacks")
        self._live_hooks = {}
        for name, caller in vars(self.plugin_manager.hook).items():
            if not isinstance(caller, pluggy.HookCaller):
                continue
            implementations = caller.get_hookimpls()
            if not implementations:
                continue
            if self._tracing or any(i.hookwrapper or i.wrapper for i in implementations):
                self._live_hooks[name] = caller
            elif [i.plugin for i in implementations] == [self._callback_plugin]:
                self._live_hooks[name] = _CALLBACKS_ONLY
            else:
                # pluggy calls the last registered first (tryfirst/trylast already sorted)
                self._live_hooks[name] = tuple(
                    (i.function, tuple(i.argnames)) for i in reversed(implementations)
                )

    def _event(self, event: str, **extra) -> TrainerControl:
        route = self._live_hooks.get(event)
        if route is None:
            return self.control
        objects = {
            "model": self.model,
            "processing_class": self.processing_class,
            "optimizer": self.optimizer,
            "lr_scheduler": self.lr_scheduler,
            "train_dataloader": self.train_dataloader,
            "eval_dataloader": self.eval_dataloader,
            **extra,
        }
        if route is _CALLBACKS_ONLY:
            self.control = self.callback_handler.call_event(
                event, self.args, self.state, self.control, objects
            )
            return self.control
        arguments = {"args": self.args, "state": self.state, "control": self.control, **objects}
        if isinstance(route, pluggy.HookCaller):
            results = route(**arguments)
        else:
            results = [function(*[arguments[n] for n in names]) for function, names in route]
        for result in results:
            if isinstance(result, TrainerControl):
                self.control = result
        return self.control

    # ----------------------------------------------------------------------- trackers

    @property
    def trackers(self):
        """The TrackerHub feeding this Trainer's trackers (resolved from ``report_to`` on
        first use)."""
        if self._tracker_hub is None:
            from .hub import TrackerHub

            self._tracker_hub = TrackerHub.for_trainer(self)
            self._tracker_hub.register(self)
        return self._tracker_hub

    # -------------------------------------------------------------------------- data

    def get_train_dataloader(self) -> DataLoader:
        """The training DataLoader, shuffled as transformers shuffles: epoch ``e`` reads the
        samples in ``randperm(n)`` order of a generator seeded with ``data_seed`` (else
        ``seed``) plus ``e``, so a resume replays the same order; under torchrun a
        DistributedSampler with the same seed shards it."""
        if self.train_dataset is None:
            raise ValueError("Trainer.train() needs a train_dataset")
        dataset = self.train_dataset
        args = self.args
        seed = args.data_seed if args.data_seed is not None else args.seed
        if isinstance(dataset, IterableDataset):
            sampler = None  # read in the dataset's own order, as transformers does
        elif self.distributed.enabled:
            sampler = DistributedSampler(
                dataset,
                num_replicas=self.distributed.world_size,
                rank=self.distributed.rank,
                shuffle=True,
                seed=seed,
            )
        else:
            sampler = _EpochSeededSampler(dataset, seed)
        return DataLoader(
            dataset,
            batch_size=args.per_device_train_batch_size,
            sampler=sampler,
            collate_fn=self._collate_fn(),
            **dataloader_options(args, self.device, dataset),
        )

    def _collate_fn(self):
        """The data collator, fed only the keys the model's ``forward`` takes (and the
        labels) when ``remove_unused_columns`` (transformers' default)."""
        if not self.args.remove_unused_columns or not self._forward_parameters:
            return self.data_collator
        keep = frozenset([*self._forward_parameters, "label", "label_ids", *self.label_names])
        return _RemoveColumns(self.data_collator, keep)

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        """An evaluation DataLoader in dataset order (contiguous shards under torchrun)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("Trainer.evaluate() needs an eval_dataset (here or at __init__)")
        return self._ordered_dataloader(dataset)

    def get_test_dataloader(self, test_dataset) -> DataLoader:
        return self._ordered_dataloader(test_dataset)

    def _ordered_dataloader(self, dataset) -> DataLoader:
        batching = {"batch_size": self.args.per_device_eval_batch_size}
        if self.distributed.enabled and not isinstance(dataset, IterableDataset):
            batching = {
                "batch_sampler": _ContiguousShardSampler(
                    len(dataset),
                    self.distributed.world_size,
                    self.distributed.rank,
                    self.args.per_device_eval_batch_size,
                )
            }
        return DataLoader(
            dataset,
            **batching,
            collate_fn=self._collate_fn(),
            **dataloader_options(self.args, self.device, dataset),
            # no generator of its own: starting it draws a seed from the global generator,
            # as in transformers, so an evaluation shifts training's random numbers alike
        )

    @staticmethod
    def _set_epoch(dataloader: DataLoader, epoch: int) -> None:
        set_epoch = getattr(dataloader.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)

    # ------------------------------------------------------------ optimizer and schedule

    def create_optimizer(self, model=None):
        """The optimizer of ``args.optim`` (see :mod:`trackmux.optimizers`), unless one was
        given to ``Trainer(optimizers=...)``."""
        if self.optimizer is None:
            self.optimizer = create_optimizer(self.args, model or self.model)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The learning-rate schedule of ``lr_scheduler_type`` with its warmup."""
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type,
                optimizer or self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs,
            )
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps, self.optimizer)

    def _mixed_precision(self):
        if not (self.args.bf16 or self.args.fp16):
            return None, None
        dtype = torch.bfloat16 if self.args.bf16 else torch.float16
        kind = self.device.type
        if kind == "cpu" and self.args.fp16:
            # as transformers (accelerate): fp16 is a GPU setting, the CPU trains in fp32
            logger.info("TrainingArguments.fp16=True on the CPU: training in fp32, as transformers")
            return None, None
        if kind == "cuda" and self.args.bf16 and not torch.cuda.is_bf16_supported():
            raise ValueError(
                "TrainingArguments.bf16=True but this GPU does not support bfloat16; "
                "use fp16=True or neither"
            )
        if not torch.amp.is_autocast_available(kind):
            raise ValueError(
                f"TrainingArguments.{'bf16' if self.args.bf16 else 'fp16'}=True but autocast "
                f"is not available on device {kind!r}"
            )
        scaler = torch.amp.GradScaler(kind) if self.args.fp16 else None
        return dtype, scaler

    def _autocast(self):
        if self._autocast_dtype is None:
            return _NO_AUTOCAST
        return torch.autocast(device_type=self.device.type, dtype=self._autocast_dtype)

    # ------------------------------------------------------------------------ steps

    def _prepare_inputs(self, inputs):
        # the common batch first: a dict of tensors, without abc's isinstance machinery
        if type(inputs) is dict:
            device = self.device
            return {
                k: v.to(device, non_blocking=True)
                if type(v) is torch.Tensor
                else self._prepare_inputs(v)
                for k, v in inputs.items()
            }
        if isinstance(inputs, Mapping):
            return type(inputs)({k: self._prepare_inputs(v) for k, v in inputs.items()})
        if isinstance(inputs, tuple | list):
            return type(inputs)(self._prepare_inputs(v) for v in inputs)
        if isinstance(inputs, torch.Tensor):
            return inputs.to(self.device, non_blocking=True)
        return inputs

    @staticmethod
    def _call_model(model, inputs):
        if type(inputs) is dict or isinstance(inputs, Mapping):
            return model(**inputs)
        if isinstance(inputs, tuple | list):
            return model(*inputs)
        return model(inputs)

    @staticmethod
    def _loss_from(outputs):
        if isinstance(outputs, torch.Tensor):
            return outputs
        if type(outputs) is dict or isinstance(outputs, Mapping):
            loss = outputs.get("loss")
        elif isinstance(outputs, tuple | list):
            loss = outputs[0] if outputs else None
        else:
            loss = getattr(outputs, "loss", None)
        if loss is None:
            raise ValueError(
                "The model did not return a loss: its forward must return the loss as a "
                "tensor, in a dict under 'loss', as the first item of a tuple or as `.loss` "
                f"(got {type(outputs).__name__}); or override Trainer.compute_loss"
            )
        return loss

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """Forward ``inputs`` through ``model`` and return the loss (and the outputs).

        The one loss path, as in transformers: training, ``evaluate()`` and ``predict()``
        (on labelled batches) all call it, so an override changes all three.
        ``num_items_in_batch`` (the labels that count in this optimizer step) is passed to a
        model whose ``forward`` takes ``**kwargs`` (transformers' rule), which then returns a
        loss already scaled for gradient accumulation."""
        if num_items_in_batch is not None and self._model_accepts_loss_kwargs:
            inputs = {**inputs, "num_items_in_batch": num_items_in_batch}
        outputs = self._call_model(model, inputs)
        loss = self._loss_from(outputs)
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, accumulation_steps: int = 1) -> torch.Tensor:
        """One forward and backward pass on a micro-batch; returns the detached loss
        divided by ``accumulation_steps`` (the micro-batches in this optimizer step)."""
        if not model.training:  # after an evaluation; a no-op call costs a module walk
            model.train()
        inputs = self._prepare_inputs(inputs)
        items = self._num_items_in_batch
        with self._autocast():
            if items is None:  # an override written without the argument still works
                loss = self.compute_loss(model, inputs)
            else:
                loss = self.compute_loss(model, inputs, num_items_in_batch=items)
        scaled = items is not None and self._model_accepts_loss_kwargs
        if accumulation_steps != 1 and not scaled:
            loss = loss / accumulation_steps
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        return loss.detach()

    # ------------------------------------------------------------------------- train

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train the model.

        ``resume_from_checkpoint``: a checkpoint directory, or True for the last checkpoint
        in ``output_dir``; None falls back to ``args.resume_from_checkpoint``.
        """
        args = self.args
        args.validate()
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(
                    f"train(resume_from_checkpoint=True): no checkpoint-<step> directory in "
                    f"output_dir={args.output_dir!r}"
                )
        hub = self.trackers  # resolves report_to: a bad name fails before any training
        self._check_output_dir(hub)
        self.train_dataloader = self.get_train_dataloader()
        plan = self._plan(self.train_dataloader)
        self.state = TrainerState(
            max_steps=plan["max_steps"],
            num_train_epochs=plan["num_train_epochs"],
            train_batch_size=args.per_device_train_batch_size,
            is_local_process_zero=self.distributed.is_local_zero,
            is_world_process_zero=self.distributed.is_world_zero,
        )
        self.state.compute_steps(args, plan["max_steps"])
        self.create_optimizer_and_scheduler(plan["max_steps"])
        if self.distributed.enabled and self.model_wrapped is self.model:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model_wrapped = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=device_ids, **ddp_options(args)
            )
        self._rng_file = None  # one left by a resume that had nothing to train
        self.model_wrapped = compile_model(args, self.model_wrapped)
        if resume_from_checkpoint:
            self._load_checkpoint(resume_from_checkpoint)
        self._stateful_callbacks_to_state()
        self._holding_step = False
        self._interrupts = interrupts = _Interrupts()
        try:
            with interrupts:
                interrupts.hold()  # opening the trackers is not cut short by a signal...
                with hub.session("train"):
                    try:
                        interrupts.release()
                        output = self._training_loop(plan)
                    except BaseException as exception:
                        self._after_training_error(exception)
                        interrupts.forget()
                        raise
                    finally:
                        interrupts.hold()  # ...nor is closing them
                interrupts.release()  # a signal that came while they closed ends train() now
        except Terminated as terminated:
            interrupts.pass_on(terminated)
            raise
        finally:
            self._interrupts = None
        return output

    def _check_output_dir(self, hub) -> None:
        """Fail before the first step, not at the first save, when ``output_dir`` cannot be
        written and something will write there (checkpoints, the run log, the final model)."""
        args = self.args
        writes = (
            args.save_strategy != "no"
            or args.save_on_interrupt
            or args.tracker_artifacts != "none"
            or any(tracker.name == "jsonl" for tracker in hub.trackers)
        )
        if not writes:
            return
        path = args.output_dir
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as error:
            raise type(error)(
                f"TrainingArguments.output_dir={path!r} is not writable "
                f"({type(error).__name__}: {error.strerror or error}); checkpoints and the "
                "jsonl run log go there. Pass an output_dir you can write to, or fix the "
                "permissions of that directory."
            ) from error

    def _after_training_error(self, exception: BaseException) -> None:
        """Training stopped with ``exception``: say why when it is an interrupt, write the
        interrupt checkpoint if asked, tell the hooks; the exception then propagates
        unchanged."""
        if isinstance(exception, KeyboardInterrupt):
            cause = str(exception) or "KeyboardInterrupt"
            logger.warning(
                "training interrupted at step %d: %s; closing the trackers as killed",
                self.state.global_step,
                cause,
            )
            if self._tracker_hub is not None:
                self._tracker_hub.interrupted = True  # the checkpoint waits on no tracker
            if self.args.save_on_interrupt:
                self._save_on_interrupt()
        self._notify_exception(exception)

    def _notify_exception(self, exception: BaseException) -> None:
        try:
            self._event("on_exception", exception=exception)
        except Exception:  # never hide the original error behind a hook's
            logger.exception("a hook failed in on_exception while handling %r", exception)

    def _plan(self, dataloader) -> dict:
        args = self.args
        try:
            batches_per_epoch = len(dataloader)
        except TypeError:
            batches_per_epoch = None
        if batches_per_epoch is None:
            if args.max_steps <= 0:
                raise ValueError(
                    "TrainingArguments.max_steps must be > 0 when the train_dataset has no "
                    f"length (got max_steps={args.max_steps!r})"
                )
            return {
                "max_steps": args.max_steps,
                "num_train_epochs": 1,
                "updates_per_epoch": args.max_steps,
                "batches_per_epoch": None,
            }
        if batches_per_epoch == 0:
            raise ValueError("train_dataset is empty: there is nothing to train on")
        updates_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
        if args.max_steps > 0:
            max_steps = args.max_steps
        else:
            max_steps = math.ceil(args.num_train_epochs * updates_per_epoch)
        return {
            "max_steps": max_steps,
            "num_train_epochs": math.ceil(max_steps / updates_per_epoch),
            "updates_per_epoch": updates_per_epoch,
            "batches_per_epoch": batches_per_epoch,
        }

    def _training_loop(self, plan) -> TrainOutput:
        args, state = self.args, self.state
        model = self.model_wrapped
        accumulation = args.gradient_accumulation_steps
        updates_per_epoch = plan["updates_per_epoch"]
        start_time = time.time()
        start_step = state.global_step
        # the loss since the last log and the steps whose loss was NaN/inf, on the device:
        # no sync per step
        self._losses = LossWindow(self.device, args.logging_nan_inf_filter)
        self._steps_since_log = 0
        self._nonfinite_reported = False
        self._last_logged_step = state.global_step
        self._total_loss = 0.0
        self._last_grad_norm = None
        self._last_learning_rate = self.lr_scheduler.get_last_lr()[0]
        self.control._new_training()
        self._event("on_train_begin")
        if args.eval_on_start:
            self.evaluate()

        first_epoch = state.global_step // updates_per_epoch
        skip_updates = state.global_step % updates_per_epoch
        batches_per_epoch = plan["batches_per_epoch"]
        for epoch in range(first_epoch, plan["num_train_epochs"]):
            # a resume from the last checkpoint has nothing left to train; transformers
            # looks at should_training_stop after an epoch, not before the first one
            first = epoch == first_epoch and self._transformers_flow
            stop = self.control.should_training_stop and not first
            if stop or state.global_step >= state.max_steps:
                break
            self._set_epoch(self.train_dataloader, epoch)
            self.control._new_epoch()
            self._event("on_epoch_begin")
            if not skip_updates:
                self._restore_rng()  # a resume at an epoch's start
            batches = _one_ahead(iter(self.train_dataloader))
            remaining = batches_per_epoch
            update_in_epoch = 0
            if skip_updates:
                for _ in range(skip_updates * accumulation):
                    next(batches)
                update_in_epoch = skip_updates
                remaining -= skip_updates * accumulation
                skip_updates = 0
            while update_in_epoch < updates_per_epoch:
                window = accumulation if remaining is None else min(accumulation, remaining)
                if not self._optimizer_step(model, batches, window):
                    break
                if remaining is not None:
                    remaining -= window
                update_in_epoch += 1
                # transformers' fraction: batches read, so an uneven last window counts less
                if batches_per_epoch is None:
                    state.epoch = epoch + update_in_epoch / updates_per_epoch
                else:
                    state.epoch = epoch + (batches_per_epoch - remaining) / batches_per_epoch
                self._event("on_step_end")
                self._maybe_log_save_evaluate()
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            self._event("on_epoch_end")
            self._maybe_log_save_evaluate()

        # steps after the last log (logging_strategy "no", an early stop) count in train_loss
        rest = self.distributed.mean(self._losses.settle()).item()
        self._check_loss(rest)
        self._total_loss += rest
        nonfinite = int(self._losses.nonfinite_steps.item())  # once per training
        if args.load_best_model_at_end and state.best_model_checkpoint:
            self._load_model_weights(state.best_model_checkpoint)
        runtime = time.time() - start_time
        steps_done = state.global_step - start_step
        train_loss = self._total_loss / max(1, steps_done)
        metrics = {
            "train_runtime": runtime,
            "train_samples_per_second": steps_done
            * args.per_device_train_batch_size
            * accumulation
            * self.distributed.world_size
            / max(runtime, 1e-9),
            "train_steps_per_second": steps_done / max(runtime, 1e-9),
            "total_flos": state.total_flos,
            "train_loss": train_loss,
        }
        if nonfinite:
            metrics["train_nonfinite_loss_steps"] = nonfinite
            logger.warning(
                "%d of the %d training step(s) had a NaN or infinite loss (stop on the first "
                "with TrainingArguments.stop_on_nonfinite_loss=True)",
                nonfinite,
                steps_done,
            )
        self.log(metrics)
        self._event("on_train_end")
        return TrainOutput(state.global_step, train_loss, metrics)

    def _optimizer_step(self, model, batches, window: int) -> bool:
        """Run one optimizer step over ``window`` micro-batches; False if data ran out (or,
        with ``transformers_flow``, a callback stopped between micro-batches)."""
        inputs_window = list(itertools.islice(batches, window))  # read first, as transformers
        self._restore_rng()  # a resume in the middle of an epoch, once its batches are read
        if not inputs_window:
            return False
        self._num_items_in_batch = self._count_label_items(inputs_window)
        self.control._new_step()
        self._event("on_step_begin")
        # a lone micro-batch's loss is its step's: the window counts the step when it
        # settles; otherwise (or to stop at once on a NaN/inf) the step is counted here
        counted_later = window == 1 and not self.args.stop_on_nonfinite_loss
        step_loss = None
        for index, inputs in enumerate(inputs_window):
            self._count_input_tokens(inputs)
            last = index == window - 1
            if not last and self.distributed.enabled:
                with model.no_sync():  # gradients are all-reduced once, on the last one
                    loss = self.training_step(model, inputs, window)
            else:
                loss = self.training_step(model, inputs, window)
            self._losses.add(loss, self._steps_since_log, counted_later)
            if not counted_later:
                step_loss = loss if step_loss is None else step_loss + loss
            if not last:
                self._event("on_substep_end")
                if self._transformers_flow and (
                    self.control.should_epoch_stop or self.control.should_training_stop
                ):
                    return False  # transformers reads the flags after every micro-batch
        if len(inputs_window) < window:
            return False
        if not counted_later:
            finite = self._losses.count_step(step_loss)
            if self.args.stop_on_nonfinite_loss:
                self._stop_if_nonfinite(finite, step_loss)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        # the norm before clipping, logged as grad_norm even without clipping (transformers)
        self._last_grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.args.max_grad_norm or math.inf
        )
        self._event("on_pre_optimizer_step")
        # from here until the step is logged, a signal waits: an interrupt checkpoint then
        # holds whole steps, each of them logged
        interrupts = self._interrupts
        if interrupts is not None:
            interrupts.hold()
            self._holding_step = True
        skipped = False
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = self.scaler.get_scale() < scale  # inf/NaN gradients: no update
        else:
            self.optimizer.step()
        self._event("on_optimizer_step")
        # logged as learning_rate: the rate this step used (transformers)
        self._last_learning_rate = self.lr_scheduler.get_last_lr()[0]
        # the schedule follows the updates made (transformers); a metric-driven one is
        # stepped after each evaluation instead
        if not skipped and not is_metric_driven(self.lr_scheduler):
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self._steps_since_log += 1
        self._maybe_empty_cache()
        return True

    def _count_label_items(self, window: list):
        """transformers' ``num_items_in_batch``: the labels (not -100) in the micro-batches
        of one optimizer step, counted only for a model that takes it (``**kwargs``)."""
        if not self._model_accepts_loss_kwargs:
            return None
        if not all(isinstance(inputs, Mapping) and "labels" in inputs for inputs in window):
            return None
        try:
            count = sum(inputs["labels"].ne(-100).sum() for inputs in window)
        except (TypeError, AttributeError):
            return None
        return count.to(self.device)

    def _stop_if_nonfinite(self, finite: torch.Tensor, step_loss: torch.Tensor) -> None:
        """stop_on_nonfinite_loss: one sync per step (all ranks agree), before the optimizer
        applies the step, so the weights and the next checkpoint stay finite."""
        if self.distributed.enabled:
            stop = self.distributed.mean((~finite).float()).item() > 0
        else:
            stop = not bool(finite)
        if not stop:
            return
        step = self.state.global_step + 1
        self._nonfinite_reported = True
        raise NonFiniteLossError(
            f"the training loss is {float(step_loss)} at step {step}: training stops "
            "(TrainingArguments.stop_on_nonfinite_loss=True); the weights are those of step "
            f"{step - 1}"
        )

    def _check_loss(self, loss: float) -> None:
        """Say once when a logged loss is NaN/inf. A non-finite step makes the sum of the
        window non-finite, so this costs nothing per step: the device counter is read only
        then. With ``logging_nan_inf_filter`` (transformers' default) the logged loss stays
        finite, so the counter is read at a log once a step may have been counted in it."""
        if self._nonfinite_reported:
            return
        if math.isfinite(loss):
            if (
                not self.args.logging_nan_inf_filter
                or not self._losses.may_count_nonfinite
                or not self._losses.nonfinite_steps.item()
            ):
                return
            loss = "NaN or infinite (logged as the window's mean: logging_nan_inf_filter)"
        self._nonfinite_reported = True
        first, last = self._last_logged_step + 1, self.state.global_step
        steps = f"step {last}" if first >= last else f"steps {first}-{last}"
        logger.warning(
            "the training loss is %s at step %d (%d step(s) with a non-finite loss so far, "
            "logged over %s); training goes on (TrainingArguments.stop_on_nonfinite_loss=True "
            "stops it); the end-of-run metrics count them as train_nonfinite_loss_steps",
            loss,
            last,
            int(self._losses.nonfinite_steps.item()),
            steps,
        )

    def _maybe_log_save_evaluate(self) -> None:
        control = self.control
        if control.should_log and self._steps_since_log:
            loss = self.distributed.mean(self._losses.settle()).item()
            self._check_loss(loss)
            self._last_logged_step = self.state.global_step
            logs = {"loss": loss / self._steps_since_log}
            if self._last_grad_norm is not None:
                logs["grad_norm"] = float(self._last_grad_norm)
            logs["learning_rate"] = self._last_learning_rate
            self._total_loss += loss
            self._losses.reset()
            self._steps_since_log = 0
            self.log(logs)
        control.should_log = False
        if self._holding_step:
            self._holding_step = False
            self._interrupts.release()
        is_new_best = False
        if control.should_evaluate:
            control.should_evaluate = False
            metrics = self.evaluate()
            self._step_metric_scheduler(metrics)
            is_new_best = self._update_best_metric(metrics)
        if self.args.save_strategy == "best":
            control.should_save = is_new_best
        if control.should_save:
            self._held(self._save_checkpoint)  # never left half-written by a signal
            self._event("on_save")
        control.should_save = False

    def _held(self, function):
        """``function()`` with signals held (see :class:`_Interrupts`)."""
        interrupts = self._interrupts
        if interrupts is None:
            return function()
        interrupts.hold()
        try:
            result = function()
        except BaseException:
            interrupts.holding -= 1
            raise
        interrupts.release()
        return result

    def _update_best_metric(self, metrics: dict) -> bool:
        name = self.args.metric_for_best_model
        if not name:
            return False
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(
                f"TrainingArguments.metric_for_best_model={name!r}: the evaluation returned no "
                f"{key!r}; available: {', '.join(sorted(metrics))}"
            )
        value = metrics[key]
        best = self.state.best_metric
        if best is None or (value > best if self.args.greater_is_better else value < best):
            self.state.best_metric = value
            self.state.best_global_step = self.state.global_step
            return True
        return False

    # ---------------------------------------------------------------------- logging

    def log(self, logs: dict) -> None:
        """Record ``logs`` in the state's history and emit ``on_log``."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        self._add_token_logs(logs)
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self._event("on_log", logs=logs)
