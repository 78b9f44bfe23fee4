"""The trackmux event protocol: every event a Trainer emits, as pluggy hook specifications.

This module is the one page a plugin author must read. Each hook is declared here with the
arguments it receives, when it fires and what it may change.

Every hook receives, by keyword:

``args``
    the :class:`~trackmux.TrainingArguments` of the run (treat as read-only).
``state``
    the :class:`~trackmux.TrainerState`: epoch, global_step, log_history, best metric...
    (read-only for plugins; the Trainer owns it).
``control``
    the :class:`~trackmux.TrainerControl`. Setting its ``should_*`` flags is the only way a
    hook steers the loop. A hook may also return a ``TrainerControl``, which then replaces the
    current one (Hugging Face's rule: the last one returned wins).
``model``
    the model being trained, unwrapped (never the DistributedDataParallel wrapper).
``processing_class``
    the tokenizer / processor given to the Trainer, or ``None``.
``optimizer``, ``lr_scheduler``
    ``None`` until training has created them.
``train_dataloader``, ``eval_dataloader``
    ``None`` until the Trainer has built them.

Some hooks receive one more object of the moment: ``logs`` (:func:`on_log`), ``metrics``
(:func:`on_evaluate`, :func:`on_predict`), ``exception`` (:func:`on_exception`).

An implementation names only the arguments it needs, as usual with pluggy::

    from trackmux import hookimpl

    @hookimpl
    def on_log(state, logs):
        print(state.global_step, logs)

Hugging Face-style callbacks (``TrainerCallback`` subclasses) receive the same objects through
``**kwargs``; the Trainer bridges them, so they run unchanged.

Hooks run on the training loop's thread, in this order: callbacks first (the flow callback
first of all, then in registration order), then plugins. Keep them cheap: a tracker that
talks to a network or a disk should subclass :class:`trackmux.Tracker`, whose work runs off
the loop.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "trackmux"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def on_init_end(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called once, at the end of ``Trainer.__init__``.

    The model is set up; the optimizer, scheduler and dataloaders are still ``None``.
    """


@hookspec
def on_train_begin(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called at the start of ``Trainer.train()``, before the first epoch.

    The state is built (and, on resume, restored from the checkpoint), the optimizer,
    scheduler and train dataloader exist. ``control.should_training_stop`` has just been reset
    to False; setting it ends training before the first step.
    """


@hookspec
def on_train_end(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called at the end of ``Trainer.train()`` when training completed (or was stopped by a
    callback through ``control.should_training_stop``), after the final ``on_log`` of the
    train summary metrics and after the best model was loaded (``load_best_model_at_end``).

    It is *not* called when training raised: see :func:`on_exception`.
    """


@hookspec
def on_epoch_begin(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called at the start of every epoch. ``control.should_epoch_stop`` has just been reset."""


@hookspec
def on_epoch_end(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called at the end of every epoch, after its last step.

    The flow callback sets ``should_log`` / ``should_evaluate`` / ``should_save`` here for the
    "epoch" strategies; the Trainer acts on them right after this hook.
    """


@hookspec
def on_step_begin(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called at the start of every optimizer step (the first micro-batch of a
    gradient-accumulation window). ``should_log``, ``should_evaluate`` and ``should_save``
    have just been reset to False.
    """


@hookspec
def on_substep_end(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called after each micro-batch that does *not* end a gradient-accumulation window.

    Only fires when ``gradient_accumulation_steps > 1``.
    """


@hookspec
def on_pre_optimizer_step(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called after gradient clipping and before ``optimizer.step()``.

    Gradients are complete and clipped: the place to monitor them.
    """


@hookspec
def on_optimizer_step(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called after ``optimizer.step()`` and before the gradients are zeroed."""


@hookspec
def on_step_end(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called at the end of every optimizer step, after the scheduler step and after
    ``state.global_step`` was incremented.

    The flow callback sets ``should_log`` / ``should_evaluate`` / ``should_save`` /
    ``should_training_stop`` here; right after this hook the Trainer logs (:func:`on_log`),
    evaluates (:func:`on_evaluate`) and saves (:func:`on_save`) as those flags say.
    """


@hookspec
def on_evaluate(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
    metrics,
):
    """Called at the end of ``Trainer.evaluate()``, after that evaluation's :func:`on_log`.

    ``metrics`` is the dict of evaluation metrics, keys prefixed (``eval_loss``,
    ``eval_accuracy``, ``eval_runtime``...). ``state.best_metric`` is still the previous best:
    the Trainer updates it after this hook.
    """


@hookspec
def on_predict(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
    metrics,
):
    """Called at the end of ``Trainer.predict()`` with its ``metrics`` (``test_*`` keys).

    No :func:`on_log` precedes it, as in Hugging Face's Trainer: a tracker that wants test
    metrics takes them here.
    """


@hookspec
def on_prediction_step(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called after each batch of an evaluation or prediction loop."""


@hookspec
def on_save(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
):
    """Called after a checkpoint was written to ``<output_dir>/checkpoint-<global_step>`` and
    old checkpoints were rotated (``save_total_limit``)."""


@hookspec
def on_log(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
    logs,
):
    """Called for every ``Trainer.log(logs)``: the periodic train log (``loss``,
    ``grad_norm``, ``learning_rate``, ``epoch``), after each evaluation (``eval_*`` keys) and
    once at the end of training with the summary (``train_runtime``, ``train_loss``...).

    ``logs`` is the dict being logged; ``state.log_history`` already holds a copy of it with
    ``step`` added. The same dict goes to every hook, so a hook that mutates it (Hugging
    Face's PrinterCallback pops ``total_flos``) changes what later hooks see; trackers receive
    their own copy.
    """


@hookspec
def on_exception(
    args,
    state,
    control,
    model,
    processing_class,
    optimizer,
    lr_scheduler,
    train_dataloader,
    eval_dataloader,
    exception,
):
    """Called when ``Trainer.train()`` raised or was interrupted, just before the exception
    propagates: ``exception`` is a ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM, which the
    Trainer turns into one while training), or the error that was raised.

    This event is trackmux's own (Hugging Face has none): it lets every plugin close its run
    with status "killed" or "failed" instead of leaving it "running" forever. The return value
    is ignored; an error raised here is logged, never allowed to hide the original one.
    """


# --------------------------------------------------------------------------- discovery


@hookspec
def register_trackers(register):
    """Called once per plugin module when trackmux loads entry points of the group
    ``trackmux``: call ``register(TrackerSubclass)`` for the tracker the plugin provides.

    Keep the module cheap to import: do not import the backend here or at module level.
    trackmux checks the tracker's ``requires`` against installed distributions and marks it
    unavailable (with the pip line that fixes it) when the backend is missing::

        @hookimpl
        def register_trackers(register):
            register(MyTracker)
    """
