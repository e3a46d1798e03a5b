"""Dense training targets: which cells of which FPN level see which object, and its 2D keypoints."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class DenseTargets:
    """Per cell (B, N): positive flag, class label (-1 = background), keypoints (px) and object size (px)."""

    positive: torch.Tensor
    labels: torch.Tensor
    keypoints: torch.Tensor
    size: torch.Tensor


def encode_targets(
    keypoints: torch.Tensor,
    labels: torch.Tensor,
    masks: torch.Tensor,
    strides: Sequence[int],
    scale_range: tuple[float, float] = (2.0, 10.0),
) -> DenseTargets:
    """Assign objects to cells as WDR does: a level takes an object whose 2D size lies in
    ``[lo * stride, hi * stride]`` (the finest level has no lower bound, the coarsest no upper bound), and
    its cells whose centre falls inside the object's visible mask become positives. An object too small
    to cover a cell centre gets the cell containing its projected centre; an object with an empty visible
    mask gets no cell.

    keypoints (B, M, 9, 2) px, labels (B, M) with -1 padding, masks (B, M, H, W) bool visible masks.
    """
    if keypoints.dim() != 4 or labels.shape != keypoints.shape[:2] or masks.shape[:2] != labels.shape:
        raise ValueError(
            f"expected keypoints (B, M, 9, 2), labels (B, M), masks (B, M, H, W); got "
            f"{tuple(keypoints.shape)}, {tuple(labels.shape)}, {tuple(masks.shape)}"
        )
    b = labels.shape[0]
    height, width = masks.shape[-2:]
    valid = labels >= 0
    extent = keypoints.amax(2) - keypoints.amin(2)
    size = extent.amax(-1).clamp(min=1.0)  # (B, M)
    centre = keypoints[:, :, -1]
    positive, owner = [], []
    for level, s in enumerate(strides):
        h, w = height // s, width // s
        ys = torch.arange(h, device=masks.device) * s + s // 2
        xs = torch.arange(w, device=masks.device) * s + s // 2
        inside = masks[:, :, ys][:, :, :, xs]  # (B, M, h, w)
        lo = 0.0 if level == 0 else scale_range[0] * s
        hi = float("inf") if level == len(strides) - 1 else scale_range[1] * s
        assigned = valid & (size >= lo) & (size <= hi)
        inside = inside & assigned[..., None, None]
        # an object whose visible mask covers no cell centre gets the cell of its centre; one that is not
        # visible at all (fully occluded, or moved out of the frame) gets no cell
        missing = assigned & masks.flatten(2).any(-1) & ~inside.flatten(2).any(-1)
        cx = (centre[..., 0] / s).floor().clamp(0, w - 1).long()
        cy = (centre[..., 1] / s).floor().clamp(0, h - 1).long()
        fallback = torch.zeros_like(inside).flatten(2)
        fallback.scatter_(2, (cy * w + cx)[..., None], missing[..., None])
        inside = inside | fallback.view_as(inside)
        flat = inside.flatten(2)  # (B, M, h*w)
        positive.append(flat.any(1))
        owner.append(flat.float().argmax(1))  # (B, h*w): index of the (first) owning instance
    pos = torch.cat(positive, dim=1)
    idx = torch.cat(owner, dim=1)
    batch = torch.arange(b, device=labels.device)[:, None]
    cell_labels = torch.where(pos, labels[batch, idx], torch.full_like(idx, -1))
    return DenseTargets(pos, cell_labels, keypoints[batch, idx], size[batch, idx])
