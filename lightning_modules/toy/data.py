"""Oriented gratings: a small, deterministic classification problem that a tiny CNN learns in seconds."""

from __future__ import annotations

import math

import torch


def gratings(
    n: int, *, classes: int = 8, size: int = 16, noise: float = 1.5, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` RGB images of sinusoidal gratings; the label is the orientation bin (``classes`` bins over 180°).

    Frequency, phase, contrast, colour and additive noise vary per image, so the task needs real features.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    angle = (labels.float() + torch.rand(n, generator=g) * 0.6 - 0.3) * math.pi / classes
    freq = 0.5 + torch.rand(n, generator=g) * 0.9
    phase = torch.rand(n, generator=g) * 2 * math.pi
    coords = torch.arange(size, dtype=torch.float32) - size / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    proj = xx[None] * torch.cos(angle)[:, None, None] + yy[None] * torch.sin(angle)[:, None, None]
    wave = torch.sin(proj * freq[:, None, None] + phase[:, None, None])
    colour = 0.3 + torch.rand(n, 3, generator=g)
    images = wave[:, None] * colour[:, :, None, None]
    images = images + noise * torch.randn(images.shape, generator=g)
    return images, labels
