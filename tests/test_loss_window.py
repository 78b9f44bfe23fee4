"""The lazy loss window gives, bit for bit, what the eager per-step filter and count gave."""

from __future__ import annotations

import math
import random

import pytest
import torch

from trackmux import loss_window
from trackmux.loss_window import LossWindow


class EagerWindow:
    """The per-step computation the window replaces (transformers' logging_nan_inf_filter
    and the non-finite step count, each done at once on every micro-batch)."""

    def __init__(self, filter_nan_inf: bool):
        self.filter_nan_inf = filter_nan_inf
        self.total = torch.zeros(())
        self.nonfinite_steps = torch.zeros((), dtype=torch.int64)

    def step(self, losses: list[torch.Tensor], steps_since_log: int) -> None:
        step_loss = None
        for loss in losses:
            if self.filter_nan_inf:
                mean = self.total / (1 + steps_since_log)
                loss_in = torch.where(torch.isfinite(loss), loss, mean)
            else:
                loss_in = loss
            self.total += loss_in
            step_loss = loss if step_loss is None else step_loss + loss
        self.nonfinite_steps += ~torch.isfinite(step_loss)


def _loss(rng: random.Random, bad_rate: float) -> torch.Tensor:
    if rng.random() < bad_rate:
        return torch.tensor(rng.choice([math.nan, math.inf, -math.inf]))
    return torch.tensor(rng.uniform(-1.0, 3.0))


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(torch.equal(a, b)) or (bool(a.isnan()) and bool(b.isnan()))


@pytest.mark.parametrize("filter_nan_inf", [True, False])
@pytest.mark.parametrize("accumulation", [1, 3])
@pytest.mark.parametrize("bad_rate", [0.0, 0.05, 0.5])
def test_logged_sums_and_counts_match_the_eager_filter(
    monkeypatch, filter_nan_inf, accumulation, bad_rate
):
    monkeypatch.setattr(loss_window, "MAX_PENDING", 7)  # settles between logs too
    rng = random.Random(f"{filter_nan_inf}{accumulation}{bad_rate}")
    eager, lazy = EagerWindow(filter_nan_inf), LossWindow("cpu", filter_nan_inf)
    steps_since_log = 0
    for step in range(1, 301):
        losses = [_loss(rng, bad_rate) for _ in range(accumulation)]
        eager.step(losses, steps_since_log)
        whole = accumulation == 1
        step_loss = None
        for loss in losses:
            lazy.add(loss, steps_since_log, whole)
            step_loss = loss if step_loss is None else step_loss + loss
        if not whole:
            lazy.count_step(step_loss)
        steps_since_log += 1
        if step % 23 == 0 or step == 300:  # a log: the window is read, then starts again
            assert _same(lazy.settle(), eager.total), step
            assert torch.equal(lazy.nonfinite_steps, eager.nonfinite_steps), step
            lazy.reset()
            eager.total.zero_()
            steps_since_log = 0


def test_a_finite_window_is_read_once_and_not_replayed(monkeypatch):
    window = LossWindow("cpu", True)
    monkeypatch.setattr(window, "_replay", lambda: pytest.fail("replayed a finite window"))
    for value in (0.5, 1.5, 2.0):
        window.add(torch.tensor(value), 0, True)
    assert window.settle().item() == 4.0
    assert window.nonfinite_steps.item() == 0


def test_pending_losses_stay_bounded_without_a_log(monkeypatch):
    monkeypatch.setattr(loss_window, "MAX_PENDING", 5)
    window = LossWindow("cpu", True)
    for _ in range(23):
        window.add(torch.tensor(1.0), 0, True)
    assert len(window._pending) < 5
    assert window.settle().item() == 23.0
