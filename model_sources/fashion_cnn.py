"""Small CNN for Fashion-MNIST, trained locally on CPU from the Debian ``dataset-fashion-mnist`` files.

Input ``[N, 1, 28, 28]`` float32 normalised by :func:`model_sources.datasets.fashion_normalize`
(/255, then (x - 0.2860) / 0.3530); output ``[N, 10]`` logits (classes:
:data:`model_sources.datasets.FASHION_CLASSES`). Ops: Conv2d, ReLU, MaxPool2d, Flatten, Linear.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.fsutil import atomic_file

from .datasets import fashion_mnist
from .training import training_stats

__all__ = ["INPUT_SHAPE", "FashionCNN", "build", "train", "load", "evaluate"]

INPUT_SHAPE = (1, 1, 28, 28)


class FashionCNN(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16x14x14
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build() -> nn.Module:
    """Untrained :class:`FashionCNN` (eval mode)."""
    return FashionCNN().eval()


def load(path: str | Path) -> nn.Module:
    """:func:`build` + strict load of a state dict written by :func:`train`."""
    model = build()
    model.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=True), strict=True)
    return model.eval()


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on normalised inputs ``x`` and int labels ``y``."""
    model.eval()
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(torch.from_numpy(x[i:i + batch_size]))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch_size]).sum())
    return correct / max(1, len(y))


def _atomic_save(state: dict, out_path: Path) -> None:
    with atomic_file(out_path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())


def train(out_path: str | Path, epochs: int = 1, seed: int = 0, limit: int | None = None, *,
          batch_size: int = 64, lr: float = 2e-3, test_limit: int | None = None,
          num_threads: int | None = None) -> dict:
    """Train on the Fashion-MNIST train split (first ``limit`` samples if given) and save the state dict
    atomically to ``out_path`` (temp file in the same directory, then ``os.replace``).

    Deterministic for a given ``seed`` (and thread count; default ``min(2, cpu_count)``). Returns
    ``{"final_loss", "test_accuracy", "train_samples", "test_samples", "epochs", "seed", "seconds",
    "path"}``; ``final_loss`` is the mean training loss over the last epoch.
    """
    out_path = Path(out_path)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    train_set = fashion_mnist(split="train", limit=limit)
    test_set = fashion_mnist(split="test", limit=test_limit)
    x = torch.from_numpy(train_set.inputs["input"])
    y = torch.from_numpy(train_set.labels)
    if len(y) == 0:
        raise ValueError("no training samples (limit=0?)")

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    try:
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = FashionCNN()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps_per_epoch = (len(y) + batch_size - 1) // batch_size
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                    pct_start=0.15)
        loss_fn = nn.CrossEntropyLoss()
        final_loss = float("nan")
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(y), generator=gen)
            total, count = 0.0, 0
            for i in range(0, len(y), batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = x[idx], y[idx]
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(xb), yb)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                count += len(idx)
            final_loss = total / count
        model.eval()
        test_acc = evaluate(model, test_set.inputs["input"], test_set.labels)
        seconds = time.perf_counter() - t0
        _atomic_save(model.state_dict(), out_path)
    finally:
        torch.set_num_threads(prev_threads)
    return training_stats(final_loss=final_loss, test_accuracy=test_acc, train_samples=len(y),
                          test_samples=len(test_set.labels), epochs=epochs, seed=seed, seconds=seconds,
                          out_path=out_path)
