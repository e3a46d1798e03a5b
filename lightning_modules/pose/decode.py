"""From dense predictions to poses: pick the confident cells of the wanted class, aggregate their
keypoint votes, and solve PnP with OpenCV."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import torch

Aggregation = Literal["mean", "median", "ransac"]
AGGREGATIONS = ("mean", "median", "ransac")
MIN_KEYPOINT_EXTENT = 1.0  # px: keypoints spanning less than this give no pose


def check_decoding_options(min_score: float, top_k: int, aggregation: str) -> None:
    """The options both decoders take (and ``PoseModule`` checks when it is built)."""
    if not 0 <= min_score <= 1:
        raise ValueError(f"min_score must lie in [0, 1], got {min_score}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")


def check_decoding_inputs(
    logits: torch.Tensor, K: torch.Tensor | np.ndarray, keypoints_3d: np.ndarray
) -> np.ndarray:
    """``K`` as float64 (B, 3, 3), checked against the logits (B, N, C) and ``keypoints_3d`` (C, 9, 3)."""
    b, _, classes = logits.shape
    K_np = np.asarray(K.detach().cpu() if isinstance(K, torch.Tensor) else K, dtype=np.float64)
    if K_np.shape != (b, 3, 3):
        raise ValueError(f"K must have shape (B, 3, 3) for B={b} images, got {K_np.shape}")
    if np.shape(keypoints_3d) != (classes, 9, 3):
        raise ValueError(f"keypoints_3d must have shape ({classes}, 9, 3), got {np.shape(keypoints_3d)}")
    return K_np


@dataclass
class PoseEstimates:
    """Per sample: rotation (B, 3, 3), translation (B, 3), whether a pose was found, and its score."""

    R: np.ndarray
    t: np.ndarray
    detected: np.ndarray
    score: np.ndarray


def keypoint_votes(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    labels: torch.Tensor,
    centres: torch.Tensor,
    strides: torch.Tensor,
    top_k: int = 32,
    relative_score: float = 0.3,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``top_k`` cells of class ``labels[b]`` per sample: keypoint votes (B, k, 9, 2) px, weights (B, k)
    (their scores, zero below ``relative_score`` x the best one) and the best score (B,)."""
    batch = torch.arange(logits.shape[0], device=logits.device)
    scores = torch.sigmoid(logits[batch, :, labels])  # (B, N)
    top, idx = scores.topk(min(top_k, scores.shape[1]), dim=1)
    votes = centres[idx][:, :, None, :] + offsets[batch[:, None], idx] * strides[idx][:, :, None, None]
    weights = torch.where(top >= relative_score * top[:, :1], top, torch.zeros_like(top))
    return votes, weights, top[:, 0]


def solve_pose(
    keypoints_3d: np.ndarray,
    votes: np.ndarray,
    weights: np.ndarray,
    K: np.ndarray,
    aggregation: Aggregation = "mean",
    ransac_threshold: float = 0.05,
) -> tuple[np.ndarray, np.ndarray] | None:
    """R (3, 3), t (3,) from keypoint votes (k, 9, 2) with ``weights`` (k,), or None when PnP fails, the
    keypoints span less than ``MIN_KEYPOINT_EXTENT`` px, or the pose lies behind the camera.

    ``mean`` / ``median``: per-keypoint weighted mean / median of the votes, then EPnP + Levenberg-Marquardt.
    ``ransac``: every vote is a correspondence for ``solvePnPRansac`` (inlier threshold
    ``ransac_threshold`` x the keypoints' 2D extent), then Levenberg-Marquardt on the inliers.
    """
    keep = weights > 0
    if not keep.any():
        return None
    votes, weights = votes[keep].astype(np.float64), weights[keep].astype(np.float64)
    obj = np.asarray(keypoints_3d, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if aggregation == "ransac":
        pts3 = np.ascontiguousarray(np.broadcast_to(obj, votes.shape[:1] + obj.shape).reshape(-1, 3))
        pts2 = np.ascontiguousarray(votes.reshape(-1, 2))
        extent = float(np.ptp(np.median(votes, axis=0), axis=0).max())
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            pts3,
            pts2,
            K,
            None,
            reprojectionError=max(1.0, ransac_threshold * extent),
            iterationsCount=100,
            confidence=0.999,
            flags=cv2.SOLVEPNP_EPNP,
        )
        if not ok or inliers is None or len(inliers) < 6:
            return None
        pts3, pts2 = pts3[inliers[:, 0]], pts2[inliers[:, 0]]
    else:
        pts3 = obj
        if aggregation == "mean":
            pts2 = (votes * weights[:, None, None]).sum(0) / weights.sum()
        elif aggregation == "median":
            pts2 = weighted_median(votes, weights)
        else:
            raise ValueError(f"aggregation must be one of {list(AGGREGATIONS)}, got {aggregation!r}")
        ok, rvec, tvec = cv2.solvePnP(pts3, pts2, K, None, flags=cv2.SOLVEPNP_EPNP)
        if not ok:
            return None
    if float(np.ptp(pts2, axis=0).max()) < MIN_KEYPOINT_EXTENT:
        return None  # the votes collapsed to a point (an untrained head): PnP would give t ~ 1e15 mm
    ok, rvec, tvec = cv2.solvePnP(
        pts3, pts2, K, None, rvec, tvec, useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok or not np.all(np.isfinite(tvec)) or tvec[2, 0] <= 0:
        return None  # no pose, or one behind the camera
    return cv2.Rodrigues(rvec)[0], tvec.reshape(3)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted median over axis 0 of ``values`` (k, ...), independently per remaining element."""
    order = np.argsort(values, axis=0)
    sorted_vals = np.take_along_axis(values, order, axis=0)
    w = np.broadcast_to(weights.reshape((-1,) + (1,) * (values.ndim - 1)), values.shape)
    cum = np.cumsum(np.take_along_axis(w, order, axis=0), axis=0)
    first = (cum >= cum[-1:] / 2).argmax(axis=0)
    return np.take_along_axis(sorted_vals, first[None], axis=0)[0]


def decode_poses(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    labels: torch.Tensor,
    K: torch.Tensor | np.ndarray,
    keypoints_3d: np.ndarray,
    centres: torch.Tensor,
    strides: torch.Tensor,
    min_score: float = 0.2,
    top_k: int = 32,
    aggregation: Aggregation = "mean",
) -> PoseEstimates:
    """Poses of the objects of class ``labels`` (B,) from PoseNet outputs; ``keypoints_3d`` (C, 9, 3).

    A sample whose best cell scores below ``min_score``, or whose PnP fails, is reported not detected
    (R = identity, t = 0), which the ADD metric counts as a failure.
    """
    check_decoding_options(min_score, top_k, aggregation)
    K_np = check_decoding_inputs(logits, K, keypoints_3d)
    classes = logits.shape[2]
    if labels.shape != (logits.shape[0],) or ((labels < 0) | (labels >= classes)).any():
        raise ValueError(
            f"labels must be (B,) = ({logits.shape[0]},) classes in [0, {classes}), got {labels.tolist()}"
        )
    with torch.no_grad():
        votes, weights, best = keypoint_votes(
            logits.float(),
            offsets.float(),
            labels,
            centres.to(logits.device),
            strides.to(logits.device),
            top_k,
        )
    votes_np, weights_np, best_np = votes.cpu().numpy(), weights.cpu().numpy(), best.cpu().numpy()
    labels_np = labels.cpu().numpy()
    b = len(labels_np)
    R = np.tile(np.eye(3), (b, 1, 1))
    t = np.zeros((b, 3))
    detected = np.zeros(b, dtype=bool)
    for i in range(b):  # one PnP per sample
        if best_np[i] < min_score:
            continue
        pose = solve_pose(keypoints_3d[labels_np[i]], votes_np[i], weights_np[i], K_np[i], aggregation)
        if pose is not None:
            R[i], t[i] = pose
            detected[i] = True
    return PoseEstimates(R, t, detected, best_np)
