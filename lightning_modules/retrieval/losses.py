"""Triplet loss of the paper: ``L = 1/2 h(m + ||q - p||^2 - ||q - n||^2)`` with ``h`` the hinge."""

from __future__ import annotations

import torch
from torch import nn

from nncf_ext.errors import ModelError


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean over anchors of the sum over negatives of ``1/2 relu(m + ||a - p||^2 - ||a - n||^2)``.

    ``anchor`` and ``positive``: ``(B, D)``; ``negatives``: ``(B, n, D)`` of each anchor, or ``(n, D)``
    shared by all anchors; ``mask`` ``(B, n)`` selects which negatives count for which anchor.
    """
    shared = negatives.ndim == 2
    if (
        anchor.ndim != 2
        or anchor.shape != positive.shape
        or negatives.ndim not in (2, 3)
        or negatives.shape[-1] != anchor.shape[-1]
        or (not shared and negatives.shape[0] != anchor.shape[0])
    ):
        raise ModelError(
            f"triplet_loss: anchor {tuple(anchor.shape)}, positive {tuple(positive.shape)} and negatives "
            f"{tuple(negatives.shape)} must be (B, D), (B, D), (B, n, D) or (n, D)"
        )
    d_pos = (anchor - positive).square().sum(-1)  # (B,)
    if shared:  # (B, n) without materialising (B, n, D)
        d_neg = anchor.square().sum(-1)[:, None] + negatives.square().sum(-1)[None] - 2 * anchor @ negatives.T
    else:
        d_neg = (anchor[:, None] - negatives).square().sum(-1)  # (B, n)
    hinge = 0.5 * torch.relu(margin + d_pos[:, None] - d_neg)
    if mask is not None:
        if mask.shape != hinge.shape:
            raise ModelError(f"triplet_loss: mask {tuple(mask.shape)} must be {tuple(hinge.shape)}")
        hinge = hinge * mask
    return hinge.sum(1).mean()


class TripletLoss(nn.Module):
    """:func:`triplet_loss` on a ``(B, 2 + n, D)`` tuple batch (anchor, positive, its mined negatives)."""

    def __init__(self, margin: float = 0.1) -> None:
        super().__init__()
        if not margin >= 0:  # NaN too
            raise ModelError(f"TripletLoss: margin must be >= 0, got {margin}")
        self.margin = margin

    def forward(self, tuples: torch.Tensor) -> torch.Tensor:
        if tuples.ndim != 3 or tuples.shape[1] < 3:
            raise ModelError(
                f"TripletLoss: expected (B, 2 + n, D) tuples with n >= 1, got {tuple(tuples.shape)}"
            )
        return triplet_loss(tuples[:, 0], tuples[:, 1], tuples[:, 2:], self.margin)
