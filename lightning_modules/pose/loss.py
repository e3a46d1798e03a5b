"""Training loss: sigmoid focal loss on objectness, smooth L1 on keypoints relative to the object's size."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from lightning_modules.pose.keypoints import NUM_KEYPOINTS
from lightning_modules.pose.targets import DenseTargets


def focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Element-wise sigmoid focal loss (Lin et al., RetinaNet)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def pose_loss(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    targets: DenseTargets,
    centres: torch.Tensor,
    strides: torch.Tensor,
    keypoint_weight: float = 5.0,
    beta: float = 0.02,
) -> dict[str, torch.Tensor]:
    """Focal loss summed over cells and classes, keypoint smooth L1 averaged over positive cells; both
    normalised by the number of positives. Keypoint errors are divided by the object's 2D size, so a
    given fraction of the size (roughly a given 3D error) costs the same near and far.

    logits (B, N, C), offsets (B, N, 9, 2) in stride units, centres (N, 2), strides (N,).
    """
    logits, offsets = logits.float(), offsets.float()  # bf16 under mixed precision
    num_pos = targets.positive.sum().clamp(min=1).float()
    one_hot = torch.zeros_like(logits)
    pos = targets.positive
    one_hot[pos, targets.labels[pos]] = 1.0
    cls = focal_loss(logits, one_hot).sum() / num_pos
    pred = centres[None, :, None, :] + offsets * strides[None, :, None, None]
    rel = (pred[pos] - targets.keypoints[pos]) / targets.size[pos][:, None, None]
    kpt = F.smooth_l1_loss(rel, torch.zeros_like(rel), beta=beta, reduction="sum") / (
        num_pos * 2 * NUM_KEYPOINTS
    )
    return {"loss": cls + keypoint_weight * kpt, "cls_loss": cls, "kpt_loss": kpt}
