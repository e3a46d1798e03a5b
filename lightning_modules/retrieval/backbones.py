"""Conv feature extractors named exactly as torchvision's ``alexnet().features`` / ``vgg16().features``.

Each backbone holds one ``features`` ``nn.Sequential`` (``features.0``, ``features.3``, ...). AlexNet and
VGG16 are cropped at the last convolution, before its ReLU and the last max-pool, as NetVLAD does
(Arandjelovic et al.; pytorch-NetVlad's ``features[:-2]``), so local descriptors keep their sign; ReLUs and
max-pools carry no weights, so torchvision state dicts load unchanged (:meth:`ConvFeatures.load_torchvision`).
``SmallFeatures`` is a few-layer backbone for CPU runs, trained from scratch, that ends with its ReLU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nncf_ext.errors import ModelError

VGG16_CONFIG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
)
"""torchvision's VGG16 ``cfgs["D"]`` without the final max-pool."""


class ConvFeatures(nn.Module):
    """A ``features`` sequential of conv layers; ``out_channels`` is the depth of its local descriptors."""

    features: nn.Sequential
    out_channels: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, H, W)`` images -> ``(N, out_channels, h, w)`` local descriptors."""
        return self.features(x)

    def load_torchvision(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load the ``features.*`` weights of a torchvision state dict (``classifier.*`` keys are ignored)."""
        own = self.state_dict()
        picked = {k: v for k, v in state_dict.items() if k.startswith("features.")}
        missing = sorted(set(own) - set(picked))
        unexpected = sorted(set(picked) - set(own))
        wrong = [
            f"{k}: {tuple(picked[k].shape)} != {tuple(v.shape)}"
            for k, v in own.items()
            if k in picked and picked[k].shape != v.shape
        ]
        if missing or unexpected or wrong:
            raise ModelError(
                f"{type(self).__name__}: state dict does not match (missing {missing[:4]}, unexpected "
                f"{unexpected[:4]}, wrong shapes {wrong[:4]})"
            )
        self.load_state_dict(picked)


class AlexNetFeatures(ConvFeatures):
    """torchvision ``alexnet().features`` to conv5, before its ReLU (``features.0`` ... ``.10``): 2.47 M
    weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
        )
        self.out_channels = 256


class VGG16Features(ConvFeatures):
    """torchvision ``vgg16().features`` to conv5_3, before its ReLU (``features.0`` ... ``.28``): 14.7 M
    weights."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for v in VGG16_CONFIG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers[:-1])  # conv5_3 without its ReLU
        self.out_channels = channels


class SmallFeatures(ConvFeatures):
    """A few 3x3 conv (+ BatchNorm) + ReLU blocks, max-pools between them (stride ``2 ** (blocks - 1)``)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 128), batch_norm: bool = True) -> None:
        super().__init__()
        if not widths or any(w < 1 for w in widths):
            raise ModelError(f"SmallFeatures: widths must be positive, got {list(widths)}")
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers.append(nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.out_channels = channels


BACKBONES: dict[str, type[ConvFeatures]] = {
    "small": SmallFeatures,
    "alexnet": AlexNetFeatures,
    "vgg16": VGG16Features,
}
