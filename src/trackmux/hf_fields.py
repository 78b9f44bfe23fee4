"""Where each ``TrainingArguments`` field stands against transformers' (the release the
``transformers`` nox session installs): the same behaviour, trackmux's own, refused, or
accepted without effect. :class:`~trackmux.training_args.TrainingArguments` refuses a
non-default value of a refused field with the reason below, and the field table of
docs/migrating-from-transformers.md is generated from :data:`FIELDS`
(``python -m trackmux.hf_fields`` prints it; a test keeps the page in step).

Standard library only: :mod:`trackmux.training_args` imports it.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

__all__ = ["FIELDS", "NO_EFFECT", "REFUSED", "SAME", "TRACKMUX", "FieldStatus", "render_table"]

SAME = "same as transformers"
TRACKMUX = "trackmux-specific"
REFUSED = "refused"
NO_EFFECT = "accepted without effect"


class FieldStatus(NamedTuple):
    status: str
    #: for REFUSED: why it cannot apply and what to do instead; else what differs, if anything
    note: str = ""


def _same(note: str = "") -> FieldStatus:
    return FieldStatus(SAME, note)


def _refused(note: str) -> FieldStatus:
    return FieldStatus(REFUSED, note)


def _no_effect(note: str) -> FieldStatus:
    return FieldStatus(NO_EFFECT, note)


def _own(note: str) -> FieldStatus:
    return FieldStatus(TRACKMUX, note)


_HUB = (
    "trackmux does not upload to the Hugging Face Hub; after training, upload output_dir "
    "with huggingface_hub.upload_folder (or a tracker's artifact upload, tracker_artifacts)"
)
_TRACKIO = (
    "trackmux's trackio plugin (report_to='trackio') writes trackio's local store only, "
    "never a Space or a bucket; set its project with "
    "tracker_config={'trackio': {'project': ...}} or TRACKIO_PROJECT"
)
_ACCELERATE = (
    "trackmux runs a plain PyTorch loop (single process or torchrun with "
    "DistributedDataParallel), without accelerate"
)

FIELDS: dict[str, FieldStatus] = {
    # --- output and length ---
    "output_dir": _same("None becomes 'trainer_output', as in transformers"),
    "overwrite_output_dir": _own(
        "kept from transformers 4.x for scripts that pass it; as there, the Trainer does not "
        "read it (example scripts did), so it has no effect"
    ),
    "num_train_epochs": _same(),
    "max_steps": _same(),
    "per_device_train_batch_size": _same(),
    "per_device_eval_batch_size": _same(),
    "gradient_accumulation_steps": _same(),
    "average_tokens_across_devices": _no_effect(
        "trackmux passes no num_items_in_batch to the model; the loss of each micro-batch is "
        "the model's own mean, as transformers computes it for a model that takes no loss kwargs"
    ),
    # --- optimizer and schedule ---
    "learning_rate": _same(),
    "weight_decay": _same(),
    "adam_beta1": _same(),
    "adam_beta2": _same(),
    "adam_epsilon": _same(),
    "max_grad_norm": _same(),
    "optim": _same(
        "the optimizers plain torch provides (adamw_torch, adamw_torch_fused, sgd, adagrad, "
        "rmsprop); the others need packages or hardware trackmux does not drive and are "
        "refused with the reason"
    ),
    "optim_args": _same("read by sgd, adagrad and rmsprop, as in transformers"),
    "optim_target_modules": _refused(
        "it selects the modules of GaLore/APOLLO optimizers, which trackmux does not build; "
        "pass your own optimizer with Trainer(optimizers=(optimizer, None))"
    ),
    "lr_scheduler_type": _same("every SchedulerType, implemented in trackmux.lr_schedules"),
    "lr_scheduler_kwargs": _same(),
    "warmup_steps": _same("a value below 1 is a fraction of the training steps"),
    "warmup_ratio": _own(
        "kept from transformers 4.x: used when warmup_steps is 0 (warmup_steps < 1 says the same)"
    ),
    "label_smoothing_factor": _refused(
        "trackmux takes the loss from the model or compute_loss; smooth labels there, e.g. "
        "torch.nn.CrossEntropyLoss(label_smoothing=0.1) in an overridden compute_loss"
    ),
    # --- precision and speed ---
    "bf16": _same(),
    "fp16": _same(),
    "bf16_full_eval": _refused(
        "trackmux evaluates the model in its training dtype; cast it yourself before "
        "evaluate() (model.to(torch.bfloat16)) if you want half-precision evaluation"
    ),
    "fp16_full_eval": _refused(
        "trackmux evaluates the model in its training dtype; cast it yourself before "
        "evaluate() (model.half()) if you want half-precision evaluation"
    ),
    "tf32": _same("sets torch's TF32 matmul/cuDNN switches; True without a TF32 GPU fails"),
    "activation_checkpointing": _same(
        "calls model.gradient_checkpointing_enable(); a model without it fails at Trainer()"
    ),
    "activation_checkpointing_kwargs": _same(),
    "gradient_checkpointing": _same("deprecated alias of activation_checkpointing"),
    "gradient_checkpointing_kwargs": _same("deprecated alias of activation_checkpointing_kwargs"),
    "torch_compile": _same("the model is wrapped with torch.compile when training starts"),
    "torch_compile_backend": _same("setting it turns torch_compile on"),
    "torch_compile_mode": _same("setting it turns torch_compile on"),
    "use_liger_kernel": _refused(
        "Liger kernels patch transformers model classes; apply liger_kernel's patches to the "
        "model yourself before passing it"
    ),
    "liger_kernel_config": _refused("see use_liger_kernel"),
    "use_cache": _same("written to model.config.use_cache when the model has a config object"),
    "neftune_noise_alpha": _refused(
        "NEFTune hooks the input embeddings of transformers models; add the noise in your "
        "model's forward instead"
    ),
    "torch_empty_cache_steps": _same("torch.cuda.empty_cache() every that many steps"),
    "auto_find_batch_size": _refused(
        "retrying with smaller batches relies on accelerate; set per_device_train_batch_size "
        "to a size that fits"
    ),
    # --- logging ---
    "logging_strategy": _same(),
    "logging_steps": _same(),
    "logging_first_step": _same(),
    "log_on_each_node": _no_effect("trackmux reports from the main process only"),
    "logging_nan_inf_filter": _same(
        "a NaN/inf step loss is replaced by the mean of the steps logged so far in the window"
    ),
    "include_num_input_tokens_seen": _same(
        "counts the main input's tokens (input_ids, or the model's main_input_name)"
    ),
    "log_level": _same("applied to the 'trackmux' logger instead of transformers'"),
    "log_level_replica": _same("applied to the 'trackmux' logger on ranks other than 0"),
    "disable_tqdm": _own("defaults to False (transformers: from the log level)"),
    "report_to": _own(
        "defaults to 'all' installed trackmux trackers (transformers 5: 'none'); names are "
        "trackmux plugins"
    ),
    "run_name": _same(),
    "project": _refused(_TRACKIO),
    "trackio_space_id": _refused(_TRACKIO),
    "trackio_bucket_id": _refused(_TRACKIO),
    "trackio_static_space_id": _refused(_TRACKIO),
    # --- evaluation ---
    "eval_strategy": _same(),
    "eval_steps": _same(),
    "eval_delay": _same(),
    "prediction_loss_only": _same(),
    "eval_on_start": _same(),
    "eval_do_concat_batches": _refused(
        "trackmux concatenates the batches of an evaluation; keep the default True"
    ),
    "eval_use_gather_object": _refused(
        "trackmux gathers tensors across ranks; return tensors from the model"
    ),
    "eval_accumulation_steps": _same(),
    "include_for_metrics": _refused(
        "compute_metrics receives predictions and label_ids; compute metrics that need the "
        "inputs or the loss in an on_evaluate callback"
    ),
    "batch_eval_metrics": _refused(
        "compute_metrics is called once, on the whole evaluation; keep the default False"
    ),
    # --- checkpoints ---
    "save_strategy": _same(),
    "save_steps": _same(),
    "save_on_each_node": _same(),
    "save_total_limit": _same(),
    "save_only_model": _same("checkpoints hold the model only; training cannot resume from them"),
    "enable_jit_checkpoint": _refused(
        "trackmux saves on SIGTERM/Ctrl-C itself: use save_on_interrupt=True"
    ),
    "load_best_model_at_end": _same(),
    "metric_for_best_model": _same(),
    "greater_is_better": _same(),
    "ignore_data_skip": _refused(
        "trackmux resumes at the exact batch it stopped at; start a new run (no "
        "resume_from_checkpoint) to begin the data again"
    ),
    "restore_callback_states_from_checkpoint": _no_effect(
        "trackmux always restores the saved state of ExportableState callbacks on resume "
        "(transformers only when this is True)"
    ),
    "resume_from_checkpoint": _same("train() reads it when called without an argument"),
    "push_to_hub": _refused(_HUB),
    "hub_token": _refused(_HUB),
    "hub_private_repo": _refused(_HUB),
    "hub_model_id": _refused(_HUB),
    "hub_strategy": _refused(_HUB),
    "hub_always_push": _refused(_HUB),
    "hub_revision": _refused(_HUB),
    # --- reproducibility ---
    "full_determinism": _same("torch.use_deterministic_algorithms(True) and cuDNN settings"),
    "seed": _same(),
    "data_seed": _same(),
    # --- hardware and data loading ---
    "use_cpu": _same(),
    "accelerator_config": _refused(f"{_ACCELERATE}; keep the default None"),
    "parallelism_config": _refused(
        f"{_ACCELERATE}: no tensor, context or sequence parallelism; use torchrun for data "
        "parallelism"
    ),
    "dataloader_drop_last": _same(),
    "dataloader_num_workers": _same(),
    "dataloader_pin_memory": _same("pins only when training on a GPU"),
    "dataloader_persistent_workers": _same(),
    "dataloader_prefetch_factor": _same(),
    "dataloader_multiprocessing_context": _same(),
    "dataloader_in_order": _same(),
    "remove_unused_columns": _same(),
    "label_names": _same(),
    "train_sampling_strategy": _refused(
        "trackmux shuffles the training data with a RandomSampler (the default 'random'); "
        "for another order pass a train_dataset already ordered and shuffle it yourself"
    ),
    "length_column_name": _refused(
        "only used by train_sampling_strategy='group_by_length', which trackmux does not offer"
    ),
    # --- distributed ---
    "ddp_find_unused_parameters": _same(
        "passed to DistributedDataParallel; None keeps torch's False (transformers: True for "
        "models that are not PreTrainedModel, which only costs time)"
    ),
    "ddp_bucket_cap_mb": _same(),
    "ddp_broadcast_buffers": _same(),
    "ddp_static_graph": _same(),
    "ddp_backend": _same("the process group's backend under torchrun"),
    "ddp_timeout": _same("the process group's timeout under torchrun"),
    "fsdp": _refused(
        "trackmux trains with DistributedDataParallel under torchrun; wrap the model with "
        "FSDP yourself or use transformers' Trainer for FSDP"
    ),
    "fsdp_config": _refused("see fsdp"),
    "deepspeed": _refused(
        "trackmux does not drive DeepSpeed; use transformers' Trainer or DeepSpeed's engine"
    ),
    "debug": _refused(
        "transformers' underflow/overflow and TPU debug options; register torch forward hooks "
        "on the model instead"
    ),
    "skip_memory_metrics": _refused(
        "trackmux does not measure memory per stage; track it with a callback "
        "(torch.cuda.max_memory_allocated) if you need it"
    ),
    "do_train": _no_effect("as in transformers: read by your script, not by the Trainer"),
    "do_eval": _no_effect("as in transformers: read by your script, not by the Trainer"),
    "do_predict": _no_effect("as in transformers: read by your script, not by the Trainer"),
    "local_rank": _no_effect("the rank comes from torchrun's LOCAL_RANK, as in transformers"),
    # --- trackmux only ---
    "tracker_strict": _own("a failing tracker raises instead of being reported"),
    "tracker_artifacts": _own("which checkpoints trackers upload"),
    "tracker_queue_size": _own("records buffered for trackers"),
    "tracker_close_timeout": _own("how long closing the trackers may take"),
    "tracker_stall_timeout": _own("when a silent tracker is reported as stalled"),
    "tracker_delivery": _own(
        "where trackers run: a delivery process fed from the journal, or threads"
    ),
    "save_on_interrupt": _own("save a checkpoint on Ctrl-C / SIGTERM"),
    "journal_errors": _own("what to do when the run journal cannot be written"),
    "run_journal": _own("keep the run journal (events.jsonl); False turns it off"),
    "stop_on_nonfinite_loss": _own("stop training at the first NaN/inf loss"),
    "transformers_flow": _own(
        "True restores transformers' exact event sequence (see Remaining differences)"
    ),
}


PAGE = "docs/migrating-from-transformers.md"
BEGIN = "<!-- fields: generated by `python -m trackmux.hf_fields --write`; do not edit -->"
END = "<!-- end of fields -->"


def render_table() -> str:
    """The markdown table of every ``TrainingArguments`` field, its default and status."""
    import dataclasses

    from .training_args import TrainingArguments

    lines = ["| Field | Default | Status | Notes |", "| --- | --- | --- | --- |"]
    for field in dataclasses.fields(TrainingArguments):
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        status, note = FIELDS[field.name]
        note = note.replace("|", "/")
        lines.append(f"| `{field.name}` | `{default!r}` | {status} | {note} |")
    return "\n".join(lines) + "\n"


def updated_page(text: str) -> str:
    """``text`` with the generated table between :data:`BEGIN` and :data:`END` replaced."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END)
    if not begin or not end:
        raise ValueError(f"{PAGE} lacks the markers {BEGIN!r} ... {END!r}")
    return f"{head}{BEGIN}\n{render_table()}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """No argument: print the table. ``--write [PATH]``: update the page. ``--check [PATH]``:
    exit 1 when the page's table is stale."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.stdout.write(render_table())
        return 0
    path = argv[1] if len(argv) > 1 else PAGE
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    fresh = updated_page(text)
    if argv[0] == "--check":
        if fresh != text:
            sys.stderr.write(
                f"{path}: the field table is stale; run python -m trackmux.hf_fields --write\n"
            )
            return 1
        return 0
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(fresh)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
