"""The training loss between two logs, summed on the device at the cost of one addition per
micro-batch.

``logging_nan_inf_filter`` (transformers' default) replaces a NaN/inf micro-batch loss by the
mean of the window so far, and the end-of-run metrics count the optimizer steps whose loss
was NaN/inf. Done eagerly that is six more tensor operations per step than a plain loop's
``running += loss`` (a few microseconds each: several percent of a small model's step). A
non-finite loss makes the plain sum non-finite too, so the window keeps only the plain sum
and the losses it added; when it is read (at a log, or every ``MAX_PENDING`` micro-batches)
and the sum is not finite, it replays those losses with the filter, operation for operation
as the eager code did. A finite sum needs nothing more: every loss in it was finite, and the
filter would have added each one as it is.
"""

from __future__ import annotations

import math

import torch

#: losses kept before the window settles without a log (one read of the sum from the device)
MAX_PENDING = 1024


class LossWindow:
    """The loss summed since the last log (``total``) and the count of optimizer steps whose
    loss was NaN/inf over the whole training (``nonfinite_steps``), both on ``device``."""

    def __init__(self, device, filter_nan_inf: bool):
        self.filter_nan_inf = filter_nan_inf
        self.total = torch.zeros((), device=device)
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64, device=device)
        # (loss, optimizer steps since the log when it was added, whether it alone is its
        # optimizer step's loss: its finiteness is then the step's, counted at the replay)
        self._pending: list[tuple[torch.Tensor, int, bool]] = []
        self._base: torch.Tensor | None = None  # total when the pending losses began
        #: False while no step can have been counted in ``nonfinite_steps``: reading the
        #: count (a sync on a GPU) can wait until then
        self.may_count_nonfinite = False

    def add(self, loss: torch.Tensor, steps_since_log: int, whole_step: bool) -> None:
        """Add one micro-batch's loss. ``whole_step``: it is its optimizer step's only
        micro-batch; else the caller counts the step with :meth:`count_step`."""
        self.total += loss
        pending = self._pending
        pending.append((loss, steps_since_log, whole_step))
        if len(pending) >= MAX_PENDING:
            self.settle()

    def count_step(self, step_loss: torch.Tensor) -> torch.Tensor:
        """Count an optimizer step of several micro-batches now (its loss is their sum);
        returns whether that loss is finite."""
        finite = torch.isfinite(step_loss)
        self.nonfinite_steps += ~finite
        self.may_count_nonfinite = True
        return finite

    def settle(self) -> torch.Tensor:
        """Apply the filter and the step count to the pending losses if the sum says one was
        not finite (one read from the device); returns ``total``."""
        if self._pending:
            if not math.isfinite(self.total.item()):
                self._replay()
            self._pending.clear()
            self._base = self.total.clone()
        return self.total

    def reset(self) -> None:
        """Start a new window (after a log): the sum back to zero."""
        self.total.zero_()
        self._pending.clear()
        self._base = None

    def _replay(self) -> None:
        self.may_count_nonfinite = True
        total = self._base.clone() if self._base is not None else torch.zeros_like(self.total)
        for loss, steps_since_log, whole_step in self._pending:
            finite = torch.isfinite(loss)
            if self.filter_nan_inf:
                total += torch.where(finite, loss, total / (1 + steps_since_log))
            if whole_step:
                self.nonfinite_steps += ~finite
        if self.filter_nan_inf:  # unfiltered, the plain sum is already the window's sum
            self.total.copy_(total)
