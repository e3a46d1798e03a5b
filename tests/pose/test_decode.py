"""PnP from keypoint votes and decoding of dense predictions into poses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_modules.metrics import add_error
from lightning_modules.pose.decode import Aggregation, decode_poses, solve_pose, weighted_median
from lightning_modules.pose.keypoints import bbox_keypoints, project, rotation_about
from lightning_modules.pose.model import cell_grid

K = np.array([[150.0, 0.0, 63.5], [0.0, 150.0, 63.5], [0.0, 0.0, 1.0]])
BOX = np.array([[x, y, z] for x in (-40, 40) for y in (-28, 28) for z in (-20, 20)], dtype=float)
KP3D = bbox_keypoints(BOX)
R_GT = rotation_about(np.array([0.3, -1.0, 0.4]), 0.9)
T_GT = np.array([-20.0, 15.0, 450.0])


@pytest.mark.parametrize("aggregation", ["mean", "median", "ransac"])
def test_pnp_recovers_a_known_pose_from_exact_keypoints(aggregation: str) -> None:
    kp2d = project(KP3D, K, R_GT, T_GT)
    votes = np.repeat(kp2d[None], 5, axis=0)
    pose = solve_pose(KP3D, votes, np.ones(5), K, aggregation)  # type: ignore[arg-type]
    assert pose is not None
    R, t = pose
    np.testing.assert_allclose(R, R_GT, atol=1e-6)
    np.testing.assert_allclose(t, T_GT, atol=1e-4)


def test_robust_aggregations_ignore_outlier_votes() -> None:
    kp2d = project(KP3D, K, R_GT, T_GT)
    rng = np.random.default_rng(0)
    votes = kp2d[None] + rng.normal(0, 0.2, (12, 9, 2))
    votes[:3] += rng.uniform(15, 30, (3, 9, 2))  # three wild cells
    weights = np.ones(12)
    errors: dict[str, float] = {}
    aggregation: Aggregation
    for aggregation in ("mean", "median", "ransac"):
        pose = solve_pose(KP3D, votes, weights, K, aggregation)
        assert pose is not None
        errors[aggregation] = add_error(*pose, R_GT, T_GT, BOX)
    diameter = float(np.linalg.norm(BOX.max(0) - BOX.min(0)))
    assert errors["median"] < 0.05 * diameter and errors["ransac"] < 0.05 * diameter
    assert errors["mean"] > 2 * max(errors["median"], errors["ransac"])
    with pytest.raises(ValueError, match="aggregation"):
        solve_pose(KP3D, votes, weights, K, "vote")  # type: ignore[arg-type]


@pytest.mark.parametrize("aggregation", ["mean", "median", "ransac"])
def test_collapsed_votes_give_no_pose(aggregation: Aggregation) -> None:
    """An untrained head puts every keypoint on its cell: PnP would report t ~ 1e15 mm as a detection."""
    votes = np.full((5, 9, 2), 40.0) + np.random.default_rng(0).normal(0, 0.1, (5, 9, 2))
    assert solve_pose(KP3D, votes, np.ones(5), K, aggregation) is None


def test_weighted_median() -> None:
    values = np.array([[1.0, 10.0], [2.0, 30.0], [100.0, 20.0]])
    np.testing.assert_allclose(weighted_median(values, np.array([1.0, 1.0, 1.0])), [2.0, 20.0])
    np.testing.assert_allclose(weighted_median(values, np.array([1.0, 1.0, 5.0])), [100.0, 20.0])


def test_decode_poses_from_dense_predictions() -> None:
    """Cells of class 1 that vote for the exact keypoints give the pose; class 0 is never confident."""
    centres, strides = cell_grid((128, 128), (8, 16, 32))
    n = len(centres)
    kp2d = torch.from_numpy(project(KP3D, K, R_GT, T_GT)).float()
    logits = torch.full((2, n, 2), -8.0)
    chosen = torch.tensor([10, 50, 200, 300])
    logits[:, chosen, 1] = 3.0
    offsets = (kp2d[None, None] - centres[None, :, None]) / strides[None, :, None, None]
    offsets = offsets.expand(2, n, 9, 2).clone()
    offsets[:, torch.tensor([0, 1, 2])] += 40.0  # garbage votes at low-scoring cells
    est = decode_poses(
        logits, offsets, torch.tensor([1, 0]), np.stack([K, K]), np.stack([KP3D, KP3D]), centres, strides
    )
    assert est.detected.tolist() == [True, False]
    assert add_error(est.R[0], est.t[0], R_GT, T_GT, BOX) < 1e-3
    assert est.score[0] == pytest.approx(torch.sigmoid(torch.tensor(3.0)).item())
    np.testing.assert_allclose(est.R[1], np.eye(3))
