"""PoseNet: a small single-stage 6D pose network in the WDR manner (backbone -> FPN -> shared dense head).

Every cell of every FPN level predicts per-class objectness logits and the 2D offsets from the cell centre
to the projections of the object's 9 keypoints (8 bounding-box corners + centre), in units of the level's
stride. Only Conv2d / BatchNorm2d / ReLU / nearest upsampling, so NNCF can quantize every conv.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from lightning_modules.pose.keypoints import NUM_KEYPOINTS


def conv_bn_relu(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class Backbone(nn.Module):
    """Plain strided conv stages; returns the stride 8, 16 and 32 feature maps."""

    def __init__(self, widths: Sequence[int] = (16, 32, 48, 96, 128)) -> None:
        super().__init__()
        w0, w1, w2, w3, w4 = widths
        self.stem = conv_bn_relu(3, w0, stride=2)
        self.stage1 = nn.Sequential(conv_bn_relu(w0, w1, stride=2), conv_bn_relu(w1, w1))
        self.stage2 = nn.Sequential(
            conv_bn_relu(w1, w2, stride=2), conv_bn_relu(w2, w2), conv_bn_relu(w2, w2)
        )
        self.stage3 = nn.Sequential(
            conv_bn_relu(w2, w3, stride=2), conv_bn_relu(w3, w3), conv_bn_relu(w3, w3)
        )
        self.stage4 = nn.Sequential(conv_bn_relu(w3, w4, stride=2), conv_bn_relu(w4, w4))
        self.out_channels = (w2, w3, w4)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        return [c3, c4, c5]


class FPN(nn.Module):
    """Top-down feature pyramid: 1x1 laterals, nearest upsampling and sums, 3x3 output convs."""

    def __init__(self, in_channels: Sequence[int], channels: int = 64) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(conv_bn_relu(c, channels, kernel=1) for c in in_channels)
        self.output = nn.ModuleList(conv_bn_relu(channels, channels) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [lat(f) for lat, f in zip(self.lateral, features, strict=True)]
        merged = [laterals[-1]]
        for lateral in reversed(laterals[:-1]):
            merged.insert(0, lateral + F.interpolate(merged[0], scale_factor=2.0, mode="nearest"))
        return [out(m) for out, m in zip(self.output, merged, strict=True)]


class PoseHead(nn.Module):
    """Dense head with its convolutions shared by all levels and a BatchNorm per level (as EfficientDet):
    objectness logits (C per cell) and keypoint offsets (9 x 2 per cell)."""

    def __init__(self, channels: int, num_classes: int, num_levels: int, convs: int = 2, prior: float = 0.01):
        super().__init__()
        self.cls_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(convs)
        )
        self.kpt_convs = nn.ModuleList(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in range(convs)
        )
        self.cls_norms = nn.ModuleList(_norms(channels, convs) for _ in range(num_levels))
        self.kpt_norms = nn.ModuleList(_norms(channels, convs) for _ in range(num_levels))
        self.relu = nn.ReLU(inplace=True)
        self.cls_out = nn.Conv2d(channels, num_classes, 3, padding=1)
        self.kpt_out = nn.Conv2d(channels, 2 * NUM_KEYPOINTS, 3, padding=1)
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.normal_(self.kpt_out.weight, std=0.01)
        with torch.no_grad():
            self.cls_out.bias.fill_(-math.log((1 - prior) / prior))  # type: ignore[union-attr]
            self.kpt_out.bias.zero_()  # type: ignore[union-attr]

    def _tower(self, x: torch.Tensor, convs: nn.ModuleList, norms: nn.Module) -> torch.Tensor:
        for conv, norm in zip(convs, norms.children(), strict=True):
            x = self.relu(norm(conv(x)))
        return x

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, offsets = [], []
        for level, f in enumerate(features):
            cls = self.cls_out(self._tower(f, self.cls_convs, self.cls_norms[level]))
            kpt = self.kpt_out(self._tower(f, self.kpt_convs, self.kpt_norms[level]))
            logits.append(cls.flatten(2).transpose(1, 2))
            offsets.append(kpt.flatten(2).transpose(1, 2))
        kpts = torch.cat(offsets, dim=1)
        return torch.cat(logits, dim=1), kpts.reshape(kpts.shape[0], kpts.shape[1], NUM_KEYPOINTS, 2)


def _norms(channels: int, count: int) -> nn.ModuleList:
    return nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(count))


class PoseNet(nn.Module):
    """``backbone`` -> ``fpn`` -> ``head``; ``forward`` returns (logits (B, N, C), offsets (B, N, 9, 2)).

    N counts the cells of all levels, finest first, row-major within a level (see ``cells``).
    """

    strides: tuple[int, ...] = (8, 16, 32)

    def __init__(
        self,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 48, 96, 128),
        fpn_channels: int = 64,
        head_convs: int = 2,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if len(widths) != 5:
            raise ValueError(f"widths must give 5 stage widths, got {list(widths)}")
        self.num_classes = num_classes
        self.backbone = Backbone(widths)
        self.fpn = FPN(self.backbone.out_channels, fpn_channels)
        self.head = PoseHead(fpn_channels, num_classes, len(self.strides), head_convs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = images.shape[-2:]
        if h % self.strides[-1] or w % self.strides[-1]:
            raise ValueError(f"image height and width must be multiples of {self.strides[-1]}, got {h}x{w}")
        return self.head(self.fpn(self.backbone(images)))

    def cells(self, image_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return cell_grid(image_hw, self.strides)


def cell_grid(image_hw: tuple[int, int], strides: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres (N, 2) in pixels (x, y; pixel centres at integers) and strides (N,) of all cells."""
    centres, cell_strides = [], []
    for s in strides:
        h, w = image_hw[0] // s, image_hw[1] // s
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        xy = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1).float() * s + (s - 1) / 2
        centres.append(xy)
        cell_strides.append(torch.full((h * w,), float(s)))
    return torch.cat(centres), torch.cat(cell_strides)
