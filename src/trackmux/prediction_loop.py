"""The Trainer's prediction loop: ``evaluate``, ``predict`` and the per-batch
``prediction_step`` they run.

A job of its own, apart from training: the model runs without gradients over an ordered
data loader (sharded contiguously under torchrun), the loss is averaged over the real
samples only, the ranks' predictions are gathered back into the dataset's order and
``compute_metrics`` turns them into metrics. What it shares with training is the loss path
(``compute_loss``, ``_prepare_inputs``, ``_call_model``, ``_loss_from``) and the events,
which stay in :mod:`trackmux.trainer`. :class:`PredictionLoop` is a mixin of
:class:`~trackmux.trainer.Trainer`; subclass the Trainer, not this, to change it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping

import torch

from .trainer_utils import EvalPrediction, PredictionOutput


class PredictionLoop:
    """Evaluation and prediction of :class:`~trackmux.trainer.Trainer` (a mixin: it uses
    the Trainer's model, arguments, data loaders, loss path and events)."""

    def prediction_step(self, model, inputs, prediction_loss_only: bool, ignore_keys=None):
        """Evaluate one batch: returns ``(loss, logits, labels)``, each possibly None.

        As transformers: when every one of ``label_names`` is in the batch, the loss comes
        from ``compute_loss(model, inputs, return_outputs=True)``; without labels the model
        runs alone and there is no loss. A batch that is not a mapping (a tuple or a tensor,
        for a model called positionally) gives the model's own loss, or the override's."""
        if isinstance(inputs, Mapping):
            names = self.label_names
            has_labels = bool(names) and all(inputs.get(name) is not None for name in names)
            return_loss = inputs.get("return_loss")
            if return_loss is None:
                return_loss = self._can_return_loss
            loss_without_labels = not names and bool(return_loss)
        else:
            from .trainer import Trainer  # the class this mixin is part of: loaded already

            names, has_labels = [], type(self).compute_loss is not Trainer.compute_loss
            loss_without_labels = False
        inputs = self._prepare_inputs(inputs)
        if ignore_keys is None:
            config = getattr(self.model, "config", None)
            ignore_keys = (
                [] if config is None else getattr(config, "keys_to_ignore_at_inference", ["cache"])
            )
        labels = None
        if has_labels or loss_without_labels:
            found = tuple(_detached(inputs.get(name)) for name in names)
            labels = found[0] if len(found) == 1 else (found or None)
        loss = None
        with torch.no_grad(), self._autocast():
            if has_labels or loss_without_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().mean()
            else:
                outputs = self._call_model(model, inputs)
                if not isinstance(inputs, Mapping):  # positional: the model's own loss
                    with contextlib.suppress(ValueError):
                        loss = self._loss_from(outputs).detach()
        if prediction_loss_only:
            return loss, None, None
        return loss, self._logits_from(outputs, ignore_keys, has_labels or loss is not None), labels

    @staticmethod
    def _logits_from(outputs, ignore_keys, has_loss: bool = True):
        """What transformers gathers as predictions: the outputs but the loss and
        ``ignore_keys`` (the whole tuple of a model that returned no loss)."""
        if isinstance(outputs, torch.Tensor):
            return None if outputs.ndim == 0 else outputs
        if isinstance(outputs, Mapping):
            values = [v for k, v in outputs.items() if k not in ("loss", *ignore_keys)]
        elif isinstance(outputs, tuple | list):
            values = list(outputs[1:] if has_loss else outputs)
        else:
            logits = getattr(outputs, "logits", None)
            values = [logits] if logits is not None else []
        values = [v for v in values if isinstance(v, torch.Tensor)]
        if not values:
            return None
        return values[0] if len(values) == 1 else tuple(values)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        """Evaluate on ``eval_dataset`` (default: the Trainer's), log the metrics and return
        them, keys prefixed with ``metric_key_prefix``."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):  # one evaluation per named dataset, as in Hugging Face
            metrics = {}
            with self.trackers.session("evaluate"):  # one tracker session for them all
                for name, part in dataset.items():
                    metrics.update(self.evaluate(part, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        with self.trackers.session("evaluate"):
            dataloader = self.get_eval_dataloader(dataset)
            # no predictions to gather without metrics to compute from them (transformers)
            loss_only = True if self.compute_metrics is None else None
            output = self._prediction_loop(dataloader, metric_key_prefix, ignore_keys, loss_only)
            self.log(output.metrics)
            self._event("on_evaluate", metrics=output.metrics)
            return output.metrics

    def predict(self, test_dataset, ignore_keys=None, metric_key_prefix: str = "test"):
        """Predict on ``test_dataset``: returns predictions, label_ids and metrics."""
        with self.trackers.session("predict"):
            dataloader = self.get_test_dataloader(test_dataset)
            output = self._prediction_loop(dataloader, metric_key_prefix, ignore_keys, None)
            self._event("on_predict", metrics=output.metrics)
            return output

    def _prediction_loop(
        self, dataloader, prefix: str, ignore_keys, prediction_loss_only: bool | None
    ) -> PredictionOutput:
        """``prediction_loss_only=None`` takes ``args.prediction_loss_only``. Every
        ``eval_accumulation_steps`` batches, the predictions gathered so far move to the CPU
        (less device memory, as in transformers)."""
        if prediction_loss_only is None:
            prediction_loss_only = self.args.prediction_loss_only
        offload_every = self.args.eval_accumulation_steps
        self.eval_dataloader = dataloader
        model = self.model
        model.eval()
        start = time.time()
        loss_sum = torch.zeros((), device=self.device)
        has_loss = False
        samples = 0
        batches = 0
        logits_parts, label_parts = [], []
        real_batches = getattr(dataloader.batch_sampler, "real_batches", None)
        for inputs in dataloader:
            loss, logits, labels = self.prediction_step(
                model, inputs, prediction_loss_only, ignore_keys
            )
            has_loss = has_loss or loss is not None
            # padding (repeated samples evening out the ranks' shards) counts in no loss
            if real_batches is None or batches < real_batches:
                size = _batch_size(inputs)
                if loss is not None:
                    loss_sum += loss.float() * size
                samples += size
            batches += 1
            if logits is not None:
                logits_parts.append(logits.detach())
            if labels is not None and not prediction_loss_only:
                label_parts.append(labels.detach())
            self._event("on_prediction_step")
            if offload_every and batches % offload_every == 0:
                logits_parts = _to_cpu(logits_parts)
                label_parts = _to_cpu(label_parts)
        runtime = time.time() - start
        totals = self.distributed.mean(
            torch.stack([loss_sum, torch.tensor(float(samples), device=self.device)])
        )
        metrics = {}
        if has_loss and totals[1] > 0:
            metrics["loss"] = (totals[0] / totals[1]).item()
        length = _dataset_length(dataloader.dataset)
        predictions = self._gather(logits_parts, length)
        label_ids = self._gather(label_parts, length)
        # transformers: no metrics without labels (predict() on unlabelled data)
        if self.compute_metrics is not None and predictions is not None and label_ids is not None:
            metrics.update(self.compute_metrics(EvalPrediction(predictions, label_ids)))
        total_samples = length if length is not None else samples * self.distributed.world_size
        metrics["runtime"] = runtime
        metrics["samples_per_second"] = total_samples / max(runtime, 1e-9)
        metrics["steps_per_second"] = batches / max(runtime, 1e-9)
        prefixed = {}
        for key, value in metrics.items():
            if not key.startswith(f"{prefix}_"):
                key = f"{prefix}_{key}"
            prefixed[key] = value
        return PredictionOutput(predictions, label_ids, prefixed)

    def _gather(self, parts, length):
        if not parts or not isinstance(parts[0], torch.Tensor):
            return None
        tensor = torch.cat(parts, dim=0)
        if self.distributed.enabled:  # parts offloaded to the CPU come back for the gather
            tensor = self.distributed.gather(tensor.to(self.device))
        if length is not None:
            tensor = tensor[:length]
        return tensor.float().cpu().numpy() if tensor.is_floating_point() else tensor.cpu().numpy()


def _batch_size(inputs) -> int:
    if isinstance(inputs, torch.Tensor):
        return inputs.shape[0] if inputs.ndim else 1
    if isinstance(inputs, Mapping):
        values = inputs.values()
    elif isinstance(inputs, tuple | list):
        values = inputs
    else:
        return 1
    for value in values:
        if isinstance(value, torch.Tensor) and value.ndim:
            return value.shape[0]
    return 1


def _to_cpu(parts: list) -> list:
    return [part.cpu() if isinstance(part, torch.Tensor) else part for part in parts]


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _dataset_length(dataset):
    try:
        return len(dataset)
    except TypeError:
        return None
