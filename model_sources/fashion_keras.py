"""Small Keras 3 CNN for Fashion-MNIST (TensorFlow backend), trained locally on CPU.

The Keras twin of :mod:`model_sources.fashion_cnn`: it takes the same ``[N, 1, 28, 28]`` float32 input (NCHW,
normalised by :func:`model_sources.datasets.fashion_normalize`) and permutes to NHWC as its first layer, so one
EvalSet feeds Keras, ONNX Runtime and TensorFlow.js alike. Output ``[N, 10]`` logits named ``logits``.
Layers: Permute, Conv2D+ReLU, MaxPool, Conv2D+ReLU, MaxPool, Flatten, Dense+ReLU, Dense.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # see pipeline/sources/keras.py
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pipeline.fsutil import atomic_file  # noqa: E402

from .datasets import fashion_mnist  # noqa: E402
from .training import training_stats  # noqa: E402

__all__ = ["INPUT_SHAPE", "INPUT_NAME", "OUTPUT_NAME", "build", "train", "load", "evaluate"]

INPUT_SHAPE = (1, 1, 28, 28)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def build(num_classes: int = 10):
    """Untrained model: NCHW input ``[batch, 1, 28, 28]`` -> logits ``[batch, num_classes]``."""
    import keras
    from keras import layers

    inp = keras.Input(shape=INPUT_SHAPE[1:], dtype="float32", name=INPUT_NAME)
    x = layers.Permute((2, 3, 1), name="to_nhwc")(inp)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)  # 14x14x16
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)  # 7x7x32
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(128, activation="relu", name="fc1")(x)
    out = layers.Dense(num_classes, name=OUTPUT_NAME)(x)
    return keras.Model(inp, out, name="fashion_keras")


def load(path: str | Path):
    """The model saved by :func:`train` (any file name: a ``.keras`` zip is recognised by content)."""
    from pipeline.sources.keras import load_keras

    return load_keras(Path(path))


def evaluate(model, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    """Top-1 accuracy on normalised NCHW inputs ``x`` and int labels ``y``."""
    correct = 0
    for i in range(0, len(y), batch_size):
        out = model(x[i:i + batch_size], training=False)
        logits = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
        correct += int((logits.argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(1, len(y))


def _set_threads(n: int) -> None:
    import tensorflow as tf

    try:  # only possible before the TF runtime starts; later calls raise and the setting stays as it was
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass


def train(out_path: str | Path, epochs: int = 1, seed: int = 0, limit: int | None = None, *,
          batch_size: int = 64, lr: float = 2e-3, test_limit: int | None = None,
          num_threads: int | None = None) -> dict:
    """Train on the Fashion-MNIST train split (first ``limit`` samples if given) and save the model (Keras 3
    ``.keras`` zip) atomically to ``out_path``: written to a temp file in the same folder, then ``os.replace``.
    ``out_path`` should end with ``.keras`` (others work with :func:`load` / pipeline.sources.keras.load_keras).

    Seeded (``keras.utils.set_random_seed``); TF CPU kernels are not bit-deterministic across thread counts.
    Returns ``{"final_loss", "test_accuracy", "train_samples", "test_samples", "epochs", "seed", "seconds",
    "path"}``; ``final_loss`` is the mean training loss over the last epoch.
    """
    out_path = Path(out_path)
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    train_set = fashion_mnist(split="train", limit=limit)
    test_set = fashion_mnist(split="test", limit=test_limit)
    x, y = train_set.inputs["input"], train_set.labels
    if len(y) == 0:
        raise ValueError("no training samples (limit=0?)")

    _set_threads(num_threads or max(1, min(2, os.cpu_count() or 1)))
    import keras

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = build()
    steps = epochs * ((len(y) + batch_size - 1) // batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(initial_learning_rate=lr, decay_steps=max(1, steps),
                                                      alpha=0.05)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)
    final_loss = float(hist.history["loss"][-1])
    test_acc = evaluate(model, test_set.inputs["input"], test_set.labels)
    seconds = time.perf_counter() - t0

    with atomic_file(out_path, suffix=".keras") as tmp:
        model.save(str(tmp), overwrite=True)
    return training_stats(final_loss=final_loss, test_accuracy=test_acc, train_samples=len(y),
                          test_samples=len(test_set.labels), epochs=epochs, seed=seed, seconds=seconds,
                          out_path=out_path)
