"""PoseNet: output layout, module names and layer types that MQAT relies on."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.pose.model import PoseNet, cell_grid


def test_outputs_cover_every_cell_of_every_level() -> None:
    net = PoseNet(num_classes=3).eval()
    logits, offsets = net(torch.rand(2, 3, 128, 96))
    centres, strides = cell_grid((128, 96), net.strides)
    n = 16 * 12 + 8 * 6 + 4 * 3
    assert logits.shape == (2, n, 3) and offsets.shape == (2, n, 9, 2)
    assert centres.shape == (n, 2) and strides[0] == 8 and strides[-1] == 32
    assert centres[1].tolist() == [11.5, 3.5]  # second cell of the finest level


def test_named_modules_and_layer_types() -> None:
    net = PoseNet(num_classes=2)
    assert [name for name, _ in net.named_children()] == ["backbone", "fpn", "head"]
    leaves = {type(m) for m in net.modules() if not list(m.children())}
    assert leaves <= {nn.Conv2d, nn.BatchNorm2d, nn.ReLU}
    assert 150_000 < sum(p.numel() for p in net.parameters()) < 1_500_000


def test_rejects_sizes_the_pyramid_cannot_take() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        PoseNet(num_classes=1)(torch.rand(1, 3, 100, 128))
    with pytest.raises(ValueError, match="num_classes"):
        PoseNet(num_classes=0)
