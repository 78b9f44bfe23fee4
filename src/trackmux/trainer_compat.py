"""The public methods of transformers' ``Trainer`` that a training script calls around
``train()`` (saving state and metrics, process checks, counting), with transformers'
behaviour, so a script written for it runs on trackmux's :class:`~trackmux.trainer.Trainer`
unchanged. :class:`TransformersMethods` is a mixin of that Trainer.

The optimizer (``optim``) and schedule (``lr_scheduler_type``) are built by
:mod:`trackmux.optimizers` and :mod:`trackmux.lr_schedules`; the rest of the runtime options
that transformers applies when its Trainer starts are in :func:`apply_runtime_options`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
from typing import Any, NamedTuple

import torch

from . import optimizers
from .lr_schedules import is_metric_driven

__all__ = ["EvalLoopOutput", "TransformersMethods", "metrics_format"]

_LEVELS = {
    "detail": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


_NO_OPTIMIZER = "Trainer.optimizer is None: call trainer.create_optimizer() (or train()) first"


class EvalLoopOutput(NamedTuple):
    predictions: Any
    label_ids: Any
    metrics: dict[str, float] | None
    num_samples: int | None


def metrics_format(metrics: dict[str, float]) -> dict[str, Any]:
    """Metrics made readable as transformers prints them: runtimes as ``h:mm:ss.ss``,
    ``total_flos`` in GF, memory in MB and other floats rounded to 4 digits."""
    formatted: dict[str, Any] = dict(metrics)
    for key, value in formatted.items():
        if "_mem_" in key:
            formatted[key] = f"{value >> 20}MB"
        elif "_runtime" in key:
            formatted[key] = _seconds_to_timedelta(value)
        elif key == "total_flos":
            formatted[key] = f"{int(value) >> 30}GF"
        elif isinstance(value, float):
            formatted[key] = round(value, 4)
    return formatted


def _seconds_to_timedelta(seconds: float) -> str:
    msec = int(abs(seconds - int(seconds)) * 100)
    return f"{datetime.timedelta(seconds=int(seconds))}.{msec:02d}"


class TransformersMethods:
    """transformers' ``Trainer`` methods that apply to trackmux's loop (see the module)."""

    #: operations counted since the last :meth:`store_flos` (a subclass adds to it)
    current_flos = 0

    # ---------------------------------------------------------------- processes

    def is_world_process_zero(self) -> bool:
        """Whether this is the main process of the whole run (rank 0)."""
        return self.args.process_index == 0

    def is_local_process_zero(self) -> bool:
        """Whether this is the main process of this machine (local rank 0)."""
        return self.args.local_process_index == 0

    # ---------------------------------------------------------- state and metrics

    def save_state(self) -> None:
        """Write the trainer state to ``output_dir/trainer_state.json`` (main process)."""
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        self.state.save_to_json(os.path.join(self.args.output_dir, "trainer_state.json"))

    def metrics_format(self, metrics: dict[str, float]) -> dict[str, Any]:
        return metrics_format(metrics)

    def log_metrics(self, split: str, metrics: dict[str, float]) -> None:
        """Print ``metrics`` as transformers does, under ``***** {split} metrics *****``
        (main process)."""
        if not self.is_world_process_zero():
            return
        print(f"***** {split} metrics *****")
        formatted = metrics_format(metrics)
        key_width = max(len(str(key)) for key in formatted)
        value_width = max(len(str(value)) for value in formatted.values())
        for key in sorted(formatted):
            print(f"  {key: <{key_width}} = {formatted[key]:>{value_width}}")

    def save_metrics(self, split: str, metrics: dict[str, float], combined: bool = True) -> None:
        """Write ``output_dir/{split}_results.json`` and, with ``combined``, merge the metrics
        into ``output_dir/all_results.json`` (main process)."""
        if not self.is_world_process_zero():
            return
        os.makedirs(self.args.output_dir, exist_ok=True)
        _write_json(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            combined_metrics = {}
            if os.path.exists(path):
                with open(path, encoding="utf-8") as handle:
                    combined_metrics = json.load(handle)
            combined_metrics.update(metrics)
            _write_json(path, combined_metrics)

    # ------------------------------------------------------------------ counting

    def num_examples(self, dataloader) -> int:
        """The number of samples of ``dataloader``'s dataset, or an estimate from its number
        of batches when the dataset has no length."""
        try:
            return len(dataloader.dataset)
        except (NameError, AttributeError, TypeError):
            return len(dataloader) * self.args.per_device_train_batch_size

    def get_num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def get_tp_size(self) -> int:
        return 1  # no tensor parallelism: data parallelism only

    def get_cp_size(self) -> int:
        return 1  # no context parallelism

    def get_sp_size(self) -> int:
        return 1  # no sequence parallelism

    def get_total_train_batch_size(self, args) -> int:
        """Samples per optimizer step over all processes."""
        return args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size

    def floating_point_ops(self, inputs: dict) -> int:
        """6 x tokens x non-embedding parameters for a model that counts its parameters
        (transformers models), else 0."""
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if (
            isinstance(inputs, dict)
            and main_input in inputs
            and hasattr(self.model, "num_parameters")
        ):
            return (
                6 * inputs[main_input].numel() * self.model.num_parameters(exclude_embeddings=True)
            )
        return 0

    def store_flos(self) -> None:
        """Add the operations counted since the last call to ``state.total_flos``."""
        flos = getattr(self, "current_flos", 0)
        if self.distributed.enabled:
            flos = self.distributed.mean(torch.tensor(float(flos), device=self.device)).item()
            flos *= self.distributed.world_size
        self.state.total_flos += flos
        self.current_flos = 0

    # ------------------------------------------------------- optimizer helpers

    def get_decay_parameter_names(self, model) -> list[str]:
        return optimizers.get_decay_parameter_names(model)

    @staticmethod
    def get_optimizer_cls_and_kwargs(args, model=None) -> tuple[Any, dict[str, Any]]:
        return optimizers.get_optimizer_cls_and_kwargs(args, model)

    def get_learning_rates(self) -> list[float]:
        if self.optimizer is None:
            raise ValueError(_NO_OPTIMIZER)
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_optimizer_group(self, param=None):
        """The parameter group that holds ``param``, or every group's parameters."""
        if self.optimizer is None:
            raise ValueError(_NO_OPTIMIZER)
        if param is not None:
            for group in self.optimizer.param_groups:
                if any(param is p for p in group["params"]):
                    return group
        return [group["params"] for group in self.optimizer.param_groups]

    # ------------------------------------------------------------ loop helpers

    def autocast_smart_context_manager(self, cache_enabled: bool | None = True):
        return self._autocast()

    def compute_loss_context_manager(self):
        stack = contextlib.ExitStack()
        stack.enter_context(self.autocast_smart_context_manager())
        return stack

    def get_batch_samples(self, epoch_iterator, num_batches: int, device=None):
        """Up to ``num_batches`` batches from ``epoch_iterator``, and the number of label
        items in them (None: trackmux does not scale the loss by it)."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        return batches, None

    def evaluation_loop(
        self,
        dataloader,
        description: str = "Evaluation",
        prediction_loss_only: bool | None = None,
        ignore_keys=None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        """Run prediction over ``dataloader`` as ``evaluate``/``predict`` do, without
        logging or events around it."""
        if prediction_loss_only is None:
            prediction_loss_only = self.args.prediction_loss_only
        output = self._prediction_loop(
            dataloader, metric_key_prefix, ignore_keys, prediction_loss_only
        )
        return EvalLoopOutput(
            output.predictions, output.label_ids, output.metrics, self.num_examples(dataloader)
        )

    def end(self) -> None:
        """Leave the process group trackmux joined under torchrun (trackers close at the end
        of each train/evaluate/predict already). Call it once, at the end of the script."""
        from .distributed import _destroy_process_group

        if self.distributed.enabled:
            _destroy_process_group()

    # ------------------------------------------------------ runtime options

    def _count_input_tokens(self, inputs) -> None:
        """``include_num_input_tokens_seen``: add this micro-batch's tokens (over all
        processes) to ``state.num_input_tokens_seen``."""
        mode = self.args.include_num_input_tokens_seen
        if mode == "no":
            return
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if not isinstance(inputs, dict) or main_input not in inputs:
            if not getattr(self, "_warned_no_tokens", False):
                self._warned_no_tokens = True
                logging.getLogger(__name__).warning(
                    "include_num_input_tokens_seen=%r: the batches hold no %r, so no tokens "
                    "are counted",
                    mode,
                    main_input,
                )
            return
        tokens = inputs[main_input]
        if mode == "non_padding":
            mask = inputs.get("attention_mask")
            if mask is not None:
                count = mask.sum()
            else:
                pad = getattr(self.processing_class, "pad_token_id", None)
                count = (tokens != pad).sum() if pad is not None else torch.tensor(tokens.numel())
        else:
            count = torch.tensor(tokens.numel())
        count = count.to(self.device, dtype=torch.int64)
        if self.distributed.enabled:
            count = self.distributed.mean(count.double()) * self.distributed.world_size
        self.state.num_input_tokens_seen += int(round(float(count)))

    def _maybe_empty_cache(self) -> None:
        steps = self.args.torch_empty_cache_steps
        on_gpu = self.device.type == "cuda"
        if on_gpu and steps is not None and self.state.global_step % steps == 0:
            torch.cuda.empty_cache()

    def _step_metric_scheduler(self, metrics: dict) -> None:
        """Step ``reduce_lr_on_plateau`` / ``greedy`` with ``metric_for_best_model`` after an
        evaluation, as transformers does."""
        if not is_metric_driven(self.lr_scheduler):
            return
        name = self.args.metric_for_best_model
        key = name if name.startswith("eval_") else f"eval_{name}"
        if key not in metrics:
            raise KeyError(
                f"TrainingArguments.metric_for_best_model={name!r}: the evaluation returned no "
                f"{key!r} for lr_scheduler_type={self.args.lr_scheduler_type!r}; available: "
                f"{', '.join(sorted(metrics))}"
            )
        self.lr_scheduler.step(metrics[key])

    def _check_resumable(self, directory: str) -> None:
        if not os.path.isfile(os.path.join(directory, "optimizer.pt")):
            raise ValueError(
                f"resume_from_checkpoint={directory!r} holds the model only (saved with "
                "save_only_model=True, or written by save_model): training cannot resume from "
                "it; load its weights into the model and start a new run instead"
            )

    def _add_token_logs(self, logs: dict) -> None:
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen


def apply_runtime_options(trainer) -> None:
    """What transformers' Trainer applies when it is built: log levels, determinism, TF32,
    ``use_cache``, activation checkpointing (each only when its field asks for it)."""
    args = trainer.args
    level = args.log_level if args.process_index == 0 else args.log_level_replica
    if level in _LEVELS:
        logging.getLogger("trackmux").setLevel(_LEVELS[level])
    if args.full_determinism:
        os.environ["CUDA_LAUNCH_BLOCKING"] = "1"
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":16:8"
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    if args.tf32 is not None:
        if args.tf32 and not _tf32_available():
            raise ValueError(
                "TrainingArguments.tf32=True needs an Ampere or newer NVIDIA GPU; leave tf32 "
                "at None (or False) on this machine"
            )
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    model = trainer.model
    config = getattr(model, "config", None)
    if config is not None and not isinstance(config, dict):  # a config object, as in HF
        with contextlib.suppress(AttributeError):
            config.use_cache = args.use_cache
    if args.activation_checkpointing:
        enable = getattr(model, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ValueError(
                "TrainingArguments.gradient_checkpointing=True needs a model with "
                f"gradient_checkpointing_enable() ({type(model).__name__} has none); wrap its "
                "blocks with torch.utils.checkpoint.checkpoint instead, or leave it False"
            )
        kwargs = args.activation_checkpointing_kwargs
        enable(gradient_checkpointing_kwargs=kwargs) if kwargs is not None else enable()


def _tf32_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8


def dataloader_options(args, device, dataset) -> dict[str, Any]:
    """The DataLoader keyword arguments of the ``dataloader_*`` fields, as transformers
    passes them (``drop_last`` and ``prefetch_factor`` only for a map-style dataset)."""
    from torch.utils.data import IterableDataset

    options: dict[str, Any] = {
        "num_workers": args.dataloader_num_workers,
        # pinned memory only speeds up copies to a GPU; elsewhere torch warns and ignores it
        "pin_memory": args.dataloader_pin_memory and device.type == "cuda",
        "persistent_workers": args.dataloader_persistent_workers,
    }
    if args.dataloader_num_workers > 0:
        options["in_order"] = args.dataloader_in_order
        options["multiprocessing_context"] = args.dataloader_multiprocessing_context
    if not isinstance(dataset, IterableDataset):
        options["drop_last"] = args.dataloader_drop_last
        if args.dataloader_prefetch_factor is not None:
            options["prefetch_factor"] = args.dataloader_prefetch_factor
    return options


def ddp_options(args) -> dict[str, Any]:
    """The DistributedDataParallel keyword arguments of the ``ddp_*`` fields that are set."""
    names = {
        "ddp_find_unused_parameters": "find_unused_parameters",
        "ddp_bucket_cap_mb": "bucket_cap_mb",
        "ddp_broadcast_buffers": "broadcast_buffers",
        "ddp_static_graph": "static_graph",
    }
    return {kw: getattr(args, f) for f, kw in names.items() if getattr(args, f) is not None}


def compile_model(args, model):
    """``torch_compile``: the model compiled with the chosen backend and mode."""
    if not args.torch_compile or hasattr(model, "_orig_mod"):  # off, or compiled already
        return model
    return torch.compile(model, backend=args.torch_compile_backend, mode=args.torch_compile_mode)


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=4, sort_keys=True)
