"""The Trainer's side of checkpoints: saving the model, writing ``checkpoint-<step>``
(atomically, on every rank) and resuming from one, RNG state included.

Apart from :mod:`trackmux.trainer` because saving and resuming is a job of its own, run
from the training loop at a few points (a save, a resume, the best model at the end); apart
from :mod:`trackmux.checkpoints`, which it builds on, because that module is the on-disk
format (file names, the state files, the RNG and optimizer states, rotation) and knows no
Trainer, while this one decides what of the Trainer goes into a checkpoint and back.
:class:`CheckpointMethods` is a mixin of :class:`~trackmux.trainer.Trainer`.
"""

from __future__ import annotations

import logging
import os

import torch

from . import checkpoints
from .checkpoints import CONFIG_NAME, OPTIMIZER_NAME, SCALER_NAME, SCHEDULER_NAME, WEIGHTS_NAME
from .trainer_utils import TEMPORARY_SUFFIX

__all__ = ["CheckpointMethods"]

# the Trainer's messages keep the logger name they always had, whichever module writes them
logger = logging.getLogger("trackmux.trainer")


class CheckpointMethods:
    """Saving and resuming of :class:`~trackmux.trainer.Trainer` (a mixin: it uses the
    Trainer's model, optimizer, scheduler, scaler, state, callbacks and trackers)."""

    def save_model(self, output_dir: str | None = None) -> str:
        """Write the model weights (safetensors), its config (when it has one) and the
        processing class to ``output_dir`` (default: ``args.output_dir``)."""
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            from safetensors.torch import save_model

            # the metadata transformers' loaders look for
            save_model(self.model, os.path.join(output_dir, WEIGHTS_NAME), {"format": "pt"})
            config = getattr(self.model, "config", None)
            if config is not None and hasattr(config, "to_json_file"):
                config.to_json_file(os.path.join(output_dir, CONFIG_NAME))
            if self.processing_class is not None and hasattr(
                self.processing_class, "save_pretrained"
            ):
                self.processing_class.save_pretrained(output_dir)
        return output_dir

    def _save_checkpoint(self) -> str:
        """Write ``checkpoint-<step>`` atomically: every file (each rank's RNG state
        included, the trainer state last) goes into ``checkpoint-<step>.tmp``, which is
        renamed to its final name only when complete; a save cut short leaves no directory
        that resume could pick. The trackers' state names the final directory (the hub may
        add identities to its trackmux_state.json later: it is there by then). The layout is
        transformers' (see :mod:`trackmux.checkpoints`)."""
        args, state, distributed = self.args, self.state, self.distributed
        directory = checkpoints.checkpoint_directory(args.output_dir, state.global_step)
        staging = directory + TEMPORARY_SUFFIX
        self.trackers.before_checkpoint(directory)
        if args.should_save:
            checkpoints.remove(staging)  # left by a save that was cut short
            os.makedirs(staging)
        distributed.barrier()  # cleaned before any rank writes into it
        os.makedirs(staging, exist_ok=True)  # a rank whose output_dir is not shared
        if args.should_save:
            self.save_model(staging)
        if args.should_save and not args.save_only_model:
            torch.save(self.optimizer.state_dict(), os.path.join(staging, OPTIMIZER_NAME))
            torch.save(self.lr_scheduler.state_dict(), os.path.join(staging, SCHEDULER_NAME))
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), os.path.join(staging, SCALER_NAME))
        if not args.save_only_model:
            rng_file = checkpoints.rng_file_name(distributed.rank, distributed.world_size)
            rng_state = checkpoints.capture_rng_state(distributed.enabled)
            torch.save(rng_state, os.path.join(staging, rng_file))
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = directory
        self._stateful_callbacks_to_state()
        distributed.barrier()  # every rank's files are in before the rename
        if args.should_save:
            checkpoints.save_state(state, staging)
            checkpoints.publish(staging, directory)
            checkpoints.rotate(args.output_dir, args.save_total_limit, state.best_model_checkpoint)
        distributed.barrier()
        if not args.should_save and os.path.isdir(staging):
            # this rank's output_dir is not the main process's: publish its own files
            checkpoints.publish(staging, directory)
        return directory

    def _stateful_callbacks_to_state(self) -> None:
        """Record the callbacks' and the control's states, keyed by class name; several
        instances make a list that is rebuilt (not appended to) on every save."""
        self.state.stateful_callbacks = checkpoints.callback_states(
            self.callback_handler.callbacks, self.control
        )

    def _load_model_weights(self, directory: str) -> None:
        from safetensors.torch import load_model

        load_model(self.model, os.path.join(directory, WEIGHTS_NAME), device=str(self.device))

    def _load_checkpoint(self, directory: str) -> None:
        """Restore what a checkpoint (trackmux's or transformers') holds but the RNG state,
        which the training loop restores where transformers does (see ``_restore_rng``)."""
        checkpoints.check_state_file(directory)
        self._load_model_weights(directory)
        self._check_resumable(directory)

        def load(name):
            return checkpoints.load_tensors(os.path.join(directory, name), self.device)

        optimizer_state = load(OPTIMIZER_NAME)
        optimizer_state = checkpoints.fit_optimizer_state(
            optimizer_state, self.optimizer, self.model
        )
        self.optimizer.load_state_dict(optimizer_state)
        scheduler_state = checkpoints.fit_scheduler_state(load(SCHEDULER_NAME), self.optimizer)
        self.lr_scheduler.load_state_dict(scheduler_state)
        if self.scaler is not None and os.path.isfile(os.path.join(directory, SCALER_NAME)):
            self.scaler.load_state_dict(load(SCALER_NAME))
        loaded = checkpoints.load_state(directory)
        loaded.is_local_process_zero = self.distributed.is_local_zero
        loaded.is_world_process_zero = self.distributed.is_world_zero
        if loaded.best_model_checkpoint and not os.path.isdir(loaded.best_model_checkpoint):
            logger.warning(
                "best_model_checkpoint %s no longer exists; forgetting it",
                loaded.best_model_checkpoint,
            )
            loaded.best_model_checkpoint = None
        for name in ("logging_steps", "eval_steps", "save_steps"):
            if getattr(loaded, name) != getattr(self.state, name):
                logger.warning(
                    "%s differs from the checkpoint's (%s vs %s): the current value is used",
                    name,
                    getattr(self.state, name),
                    getattr(loaded, name),
                )
                setattr(loaded, name, getattr(self.state, name))
        loaded.max_steps = self.state.max_steps
        loaded.num_train_epochs = self.state.num_train_epochs
        self.state = loaded
        checkpoints.restore_callback_states(
            self.callback_handler.callbacks, self.control, loaded.stateful_callbacks
        )
        distributed = self.distributed
        self._rng_file = checkpoints.find_rng_file(
            directory, distributed.rank, distributed.world_size
        )
        if self._rng_file is None:
            logger.warning("no RNG state for rank %s in %s", distributed.rank, directory)

    def _restore_rng(self) -> None:
        """The RNG state of the checkpoint resumed from, once: after the data loader of the
        resumed epoch has started (it draws its base seed from the global generator) and its
        trained batches were skipped, as transformers does, so the steps after the resume
        draw the numbers the uninterrupted run drew."""
        if self._rng_file is None:
            return
        path, self._rng_file = self._rng_file, None
        checkpoints.restore_rng_state(checkpoints.load_tensors(path), self.distributed.enabled)
