"""MTCNN's O-Net: the last stage of the MTCNN face detector, a real multi-output head. For a 48x48 crop it gives
the face probability [N, 2] (not a face, face), box regression [N, 4] and five landmarks [N, 10]. Weights are the
state dict the ``facenet-pytorch`` wheel ships (``data/onet.pt``, installed --no-deps: its own module imports
torchvision, unusable here), so this module is our own, with parameter names matching that state dict."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .packages import package_file


class ONet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)   # face / not a face
        self.dense6_2 = nn.Linear(256, 4)   # box regression
        self.dense6_3 = nn.Linear(256, 10)  # landmarks (x1..x5, y1..y5)

    def forward(self, x):
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        # The weights were trained with the features flattened in (W, H, C) order.
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return torch.softmax(self.dense6_1(x), dim=1), self.dense6_2(x), self.dense6_3(x)


def build() -> ONet:
    return ONet().eval()


def weights_path() -> Path:
    return package_file("facenet_pytorch", "data/onet.pt")


def decode_faces(outputs: dict, threshold: float = 0.7, size: int = 48) -> list[dict]:
    """O-Net's own rules, as MTCNN applies them to each candidate crop: a face when its probability is at least
    `threshold` (MTCNN's third-stage default, 0.7), its box the crop's box moved by the regression offsets
    (fractions of the crop's size). The crop is the whole `size` x `size` input, so boxes are in its pixels."""
    import numpy as np

    prob, reg = np.asarray(outputs["face_prob"])[:, 1], np.asarray(outputs["box"])
    crop = np.array([0.0, 0.0, size, size])
    out = []
    for p, r in zip(prob, reg):
        keep = p >= threshold
        out.append({"boxes": (crop + r * size)[None] if keep else np.zeros((0, 4)),
                    "scores": np.array([p] if keep else [])})
    return out
