"""Training augmentation for 2D keypoint targets: a random similarity warp and colour jitter.

Rotating, scaling or shifting an image moves the projections of the object's keypoints by the same
similarity, so warped images with warped keypoints are valid training pairs for a 2D keypoint predictor
(the pose recovered by PnP uses the original camera only at test time).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class PoseAugment:
    """Rotation (degrees) about the image centre, isotropic scale, shift (fraction of the size), colour."""

    max_rotation: float = 30.0
    scale_range: tuple[float, float] = (0.85, 1.2)
    max_shift: float = 0.1
    colour: float = 0.2

    def __call__(
        self,
        rgb: np.ndarray,
        keypoints: np.ndarray | Callable[[np.ndarray], np.ndarray],
        masks: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Augmented copies of rgb (H, W, 3) uint8, keypoints (n, 9, 2) px and masks (n, H, W) bool.

        ``keypoints`` may be a function of the warp's in-plane rotation as a camera roll (3 x 3, about the
        optical axis) giving the keypoints in the source image: symmetric objects choose their canonical
        keypoints for the rolled camera (``keypoints.canonical_pose``).
        """
        h, w = rgb.shape[:2]
        angle = rng.uniform(-self.max_rotation, self.max_rotation)
        scale = rng.uniform(*self.scale_range)
        M = np.asarray(cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale), dtype=np.float64)
        M[:, 2] += rng.uniform(-self.max_shift, self.max_shift, 2) * np.array([w, h], dtype=np.float64)
        if callable(keypoints):
            roll = np.eye(3)
            roll[:2, :2] = M[:, :2] / scale  # image x right, y down: the camera's x and y axes
            keypoints = keypoints(roll)
        fill = tuple(float(c) for c in rgb.reshape(-1, 3).mean(0))
        out = cv2.warpAffine(rgb, M, (w, h), flags=cv2.INTER_LINEAR, borderValue=fill)
        if len(masks):
            stacked = np.ascontiguousarray(masks.transpose(1, 2, 0).astype(np.uint8))
            warped = cv2.warpAffine(stacked, M, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
            masks = warped.reshape(h, w, -1).transpose(2, 0, 1) > 0
        keypoints = (keypoints @ M[:, :2].T + M[:, 2]).astype(np.float32)
        gain = rng.uniform(1 - self.colour, 1 + self.colour, 3)
        offset = rng.uniform(-self.colour, self.colour) * 127.0
        out = np.clip(out.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        return out, keypoints, masks
