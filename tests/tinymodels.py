"""Tiny models and data for fast end-to-end tests (recipes refer to them as 'tinymodels:...')."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from model_sources.datasets import EvalSet


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def build() -> nn.Module:
    return TinyCNN().eval()


def make_weights(path, seed: int = 0) -> None:
    torch.manual_seed(seed)
    m = TinyCNN()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-0.1, 0.1)
        m.bn.running_var.uniform_(0.5, 1.5)
    torch.save(m.state_dict(), path)


def train(out_path, seed: int = 0) -> dict:
    """A 'trainer' for recipes: deterministic weights, no data needed."""
    make_weights(out_path, seed)
    return {"seed": seed}


def samples(input_name: str = "input", n: int = 12, seed: int = 1, labelled: bool = True) -> EvalSet:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, 8, 8)).astype(np.float32)
    # Arbitrary labels: tests check that the labelled metrics are computed and compared, not their level.
    labels = (np.arange(n) % 4).astype(np.int64) if labelled else None
    return EvalSet(inputs={input_name: x}, labels=labels, ids=[f"s{i}" for i in range(n)])
