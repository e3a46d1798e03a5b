"""Shared fixtures: tiny models built fresh for each test."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("NNCF_CI", "1")  # no telemetry from tests


class TinyNet(nn.Module):
    """conv -> bn -> relu -> conv -> mean -> linear: two conv weights and one linear weight."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def example_input() -> torch.Tensor:
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def pruning_config(threshold: object = 0.05, **extra: object) -> dict[str, object]:
    return {
        "input_info": {"sample_size": [1, 3, 12, 12]},
        "compression": [{"algorithm": "threshold_pruning", "threshold": threshold, **extra}],
    }


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
