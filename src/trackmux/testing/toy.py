"""A tiny deterministic task (data + model) for tests, the demo and the benchmarks."""

from __future__ import annotations

import torch
from torch import nn


class RegressionDataset(torch.utils.data.Dataset):
    """``y = x @ w + noise``; items are ``{"x": ..., "labels": ...}``.

    ``seed`` draws the samples; ``task_seed`` draws ``w``, so datasets with different seeds
    (train, eval) describe the same task."""

    def __init__(
        self,
        size: int = 64,
        features: int = 8,
        seed: int = 0,
        noise: float = 0.1,
        task_seed: int = 0,
    ):
        weights = torch.randn(features, 1, generator=torch.Generator().manual_seed(task_seed))
        generator = torch.Generator().manual_seed(seed + 1000)
        self.x = torch.randn(size, features, generator=generator)
        self.y = self.x @ weights + noise * torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index):
        return {"x": self.x[index], "labels": self.y[index]}


class TinyRegressor(nn.Module):
    """A small MLP whose forward returns ``{"loss", "logits"}`` like a Hugging Face model."""

    def __init__(self, features: int = 8, hidden: int = 16, dropout: float = 0.0):
        super().__init__()
        self.config = {"features": features, "hidden": hidden, "dropout": dropout}
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, x, labels=None):
        logits = self.net(x)
        if labels is None:
            return {"logits": logits}
        return {"loss": nn.functional.mse_loss(logits, labels), "logits": logits}
