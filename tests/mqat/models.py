"""A small modular network (backbone / fpn / head) and a way to make all but one module robust."""

from __future__ import annotations

import torch
from torch import nn


class ModularNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()
        )
        self.fpn = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU())
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        return self.head((self.fpn(features) + features).mean((2, 3)))


@torch.no_grad()
def make_ternary(module: nn.Module, value: float = 0.3) -> None:
    """Weights in {-value, 0, +value}: any symmetric quantizer with >= 2 bits represents them exactly."""
    for name, param in module.named_parameters():
        if name.endswith("weight"):
            param.copy_(torch.sign(torch.round(param / param.abs().max() * 1.5)) * value)


def fragile_fpn_net() -> ModularNet:
    """Backbone and head survive any bit-width; only the fpn loses information when quantized."""
    torch.manual_seed(0)
    model = ModularNet()
    make_ternary(model.backbone)
    make_ternary(model.head)
    return model
