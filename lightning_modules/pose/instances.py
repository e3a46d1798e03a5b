"""Several instances of a class in one image: group the confident cells of a class by the object centre
they vote for, then solve one PnP per group.

``decode_poses`` pools the best cells of the wanted class, which assumes one instance per class (LM, LM-O).
Here every cell votes for its object's projected centre (the ninth keypoint); cells are grouped greedily in
score order, as non-maximum suppression groups boxes: the best free cell seeds an instance, and the free
cells whose centre vote lies within ``radius`` x the seed's keypoint extent join it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lightning_modules.pose.decode import (
    Aggregation,
    check_decoding_inputs,
    check_decoding_options,
    solve_pose,
)


@dataclass
class Detection:
    """One instance found in an image: class index, pose R (3, 3), t (3,), and its best cell's score."""

    label: int
    R: np.ndarray
    t: np.ndarray
    score: float


def group_cells(
    centre_votes: np.ndarray,
    extents: np.ndarray,
    scores: np.ndarray,
    radius: float,
    can_seed: np.ndarray | None = None,
) -> np.ndarray:
    """Instance index (n,) of each cell, 0 for the best-scoring instance, -1 for a cell in no instance; cells
    are (n,) with their centre votes (n, 2) px and keypoint extents (n,) px. In score order, each free cell
    that ``can_seed`` (default: all) seeds an instance, which takes every free cell whose centre vote lies
    within ``radius`` x the seed's extent of its own."""
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    n = len(scores)
    seeds = np.ones(n, dtype=bool) if can_seed is None else np.asarray(can_seed, dtype=bool)
    if centre_votes.shape != (n, 2) or extents.shape != (n,) or seeds.shape != (n,):
        raise ValueError(f"expected centre_votes (n, 2), extents (n,) and can_seed (n,) for n={n} cells")
    group = np.full(n, -1, dtype=np.int64)
    instance = 0
    for seed in np.argsort(-scores, kind="stable"):
        if group[seed] >= 0 or not seeds[seed]:
            continue
        near = np.linalg.norm(centre_votes - centre_votes[seed], axis=1) <= radius * extents[seed]
        group[near & (group < 0)] = instance
        instance += 1
    return group


def decode_instances(
    logits: torch.Tensor,
    offsets: torch.Tensor,
    K: torch.Tensor | np.ndarray,
    keypoints_3d: np.ndarray,
    centres: torch.Tensor,
    strides: torch.Tensor,
    min_score: float = 0.2,
    top_k: int = 32,
    relative_score: float = 0.3,
    aggregation: Aggregation = "median",
    radius: float = 0.5,
    max_instances: int = 10,
) -> list[list[Detection]]:
    """Every instance of every class in each image, best first: logits (B, N, C), offsets (B, N, 9, 2) as
    PoseNet gives them, K (B, 3, 3), ``keypoints_3d`` (C, 9, 3).

    An instance is a group of cells (see ``group_cells``) seeded by a cell scoring at least ``min_score``;
    its ``top_k`` best cells above ``relative_score`` x its best vote for the keypoints, as in
    ``decode_poses``. At most ``max_instances`` per class and image are solved; a group whose PnP fails
    gives no detection.
    """
    check_decoding_options(min_score, top_k, aggregation)
    if max_instances < 1:
        raise ValueError(f"max_instances must be >= 1, got {max_instances}")
    K_np = check_decoding_inputs(logits, K, keypoints_3d)
    with torch.no_grad():
        scores = torch.sigmoid(logits.float()).cpu().numpy()  # (B, N, C)
        centres, strides = centres.to(offsets.device), strides.to(offsets.device)
        votes = centres[None, :, None, :] + offsets.float() * strides[None, :, None, None]
        votes_np = votes.cpu().numpy()  # (B, N, 9, 2) px
    found: list[list[Detection]] = []
    for b in range(scores.shape[0]):
        image: list[Detection] = []
        for label in np.flatnonzero((scores[b] >= min_score).any(0)):
            # cells that may vote: as in decode_poses, down to relative_score x a best cell of min_score
            cells = np.flatnonzero(scores[b, :, label] >= relative_score * min_score)
            cell_votes, cell_scores = votes_np[b, cells], scores[b, cells, label]
            extents = np.ptp(cell_votes, axis=1).max(axis=1)
            group = group_cells(cell_votes[:, -1], extents, cell_scores, radius, cell_scores >= min_score)
            for instance in range(min(int(group.max()) + 1, max_instances)):
                member = np.flatnonzero(group == instance)
                member = member[np.argsort(-cell_scores[member], kind="stable")[:top_k]]
                top = cell_scores[member]
                weights = np.where(top >= relative_score * top[0], top, 0.0)
                pose = solve_pose(keypoints_3d[label], cell_votes[member], weights, K_np[b], aggregation)
                if pose is not None:
                    image.append(Detection(int(label), pose[0], pose[1], float(top[0])))
        found.append(sorted(image, key=lambda d: -d.score))
    return found
