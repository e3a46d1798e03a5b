"""Dynamic zoom-in: a second pass of the same network over a magnified crop around a small object.

A far object spans few pixels, so the keypoint errors that PnP turns into depth errors are large relative
to its size. Two-stage pose methods (CDPN, GDR-Net, ZebraPose) therefore crop the detected object and
resize it to a fixed size. Here the first pass's pose gives the object's 2D centre and size; the image is
magnified about that centre so the object spans about ``target_size`` pixels (at most ``max_zoom``x),
and the crop is a pinhole image with intrinsics ``A @ K``, so decoding and PnP run unchanged on it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

from lightning_modules.pose.keypoints import project


def projected_extent(
    keypoints_3d: np.ndarray, R: np.ndarray, t: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """2D size (B,) (largest side of the keypoints' bounding box, px) and centre (B, 2) of the keypoints
    (B, k, 3) posed by R (B, 3, 3), t (B, 3) and projected by K (B, 3, 3); the same size as the targets'."""
    uv = project(keypoints_3d, K, R, t)
    lo, hi = uv.min(1), uv.max(1)
    return (hi - lo).max(-1), (lo + hi) / 2


def zoom_matrices(centres: np.ndarray, zooms: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """Affine maps A (B, 3, 3) from image to crop pixels: ``centres`` (B, 2) go to the crop's centre and
    distances grow by ``zooms`` (B,). Pixel centres are at integer coordinates."""
    h, w = image_hw
    out_centre = np.array([(w - 1) / 2, (h - 1) / 2])
    A = np.tile(np.eye(3), (len(zooms), 1, 1))
    A[:, 0, 0] = A[:, 1, 1] = zooms
    A[:, :2, 2] = out_centre - zooms[:, None] * centres
    return A


def zoom_crops(images: torch.Tensor, A: np.ndarray) -> torch.Tensor:
    """Resample images (B, 3, H, W) through the zoom maps ``A`` (B, 3, 3) (bilinear); pixels from outside
    the image take its mean colour, as the training augmentation fills them."""
    b, _, h, w = images.shape
    inv = np.linalg.inv(A)  # crop pixel -> image pixel
    # normalised coordinates (align_corners=True): n = 2 p / (size - 1) - 1 per axis
    to_norm = np.array([[2 / (w - 1), 0, -1], [0, 2 / (h - 1), -1], [0, 0, 1]])
    theta = to_norm @ inv @ np.linalg.inv(to_norm)
    theta_t = torch.as_tensor(theta[:, :2], dtype=images.dtype, device=images.device)
    grid = F.affine_grid(theta_t, [b, 3, h, w], align_corners=True)
    fill = images.mean(dim=(2, 3), keepdim=True)
    crops = F.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return crops + fill


def zoom_factors(sizes: np.ndarray, target_size: float, max_zoom: float) -> np.ndarray:
    """Magnification per object: ``target_size / size``, clipped to [1, ``max_zoom``]."""
    return np.clip(target_size / np.maximum(sizes, 1e-6), 1.0, max_zoom)
