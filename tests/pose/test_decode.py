"""PnP from keypoint votes and decoding of dense predictions into poses."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import pytest
import torch

from lightning_modules.metrics import add_error
from lightning_modules.pose import decode as decode_module
from lightning_modules.pose.decode import (
    Aggregation,
    decode_poses,
    keypoint_votes,
    solve_pose,
    weighted_median,
)
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


def test_low_scoring_cells_among_the_top_k_get_no_weight() -> None:
    """Cells under ``relative_score`` x the best one vote with weight 0, even when the top k holds them."""
    centres, strides = cell_grid((128, 128), (8, 16, 32))
    n = len(centres)
    kp2d = torch.from_numpy(project(KP3D, K, R_GT, T_GT)).float()
    logits = torch.full((1, n, 1), -8.0)
    good, weak = torch.tensor([10, 50]), torch.tensor([60, 70, 80])
    logits[0, good, 0] = 3.0
    logits[0, weak, 0] = -1.0  # sigmoid 0.27 < 0.3 x 0.95
    offsets = ((kp2d[None, None] - centres[None, :, None]) / strides[None, :, None, None]).clone()
    offsets[0, weak] += 5.0  # wrong votes, in the top 5 cells
    _, weights, _ = keypoint_votes(logits, offsets, torch.tensor([0]), centres, strides, top_k=5)
    assert weights[0, :2].gt(0).all() and weights[0, 2:].eq(0).all()
    est = decode_poses(
        logits, offsets, torch.tensor([0]), K[None], KP3D[None], centres, strides, top_k=5, aggregation="mean"
    )
    assert est.detected[0] and add_error(est.R[0], est.t[0], R_GT, T_GT, BOX) < 1e-3


def test_each_sample_decodes_with_its_own_class_keypoints_and_camera() -> None:
    centres, strides = cell_grid((128, 128), (8, 16, 32))
    n = len(centres)
    kp3d = np.stack([KP3D, 1.5 * KP3D])  # class 1 is a larger box
    cameras = np.stack([K, np.array([[220.0, 0.0, 60.0], [0.0, 200.0, 66.0], [0.0, 0.0, 1.0]])])
    labels = [1, 0]
    logits = torch.full((2, n, 2), -8.0)
    offsets = torch.zeros(2, n, 9, 2)
    for i, label in enumerate(labels):
        kp2d = torch.from_numpy(project(kp3d[label], cameras[i], R_GT, T_GT)).float()
        logits[i, :20, label] = 3.0
        offsets[i] = (kp2d[None] - centres[:, None]) / strides[:, None, None]
    est = decode_poses(logits, offsets, torch.tensor(labels), cameras, kp3d, centres, strides)
    assert est.detected.all()
    for i in range(2):
        assert add_error(est.R[i], est.t[i], R_GT, T_GT, BOX) < 1e-2


def test_a_pose_behind_the_camera_is_no_pose(monkeypatch: pytest.MonkeyPatch) -> None:
    kp2d = project(KP3D, K, R_GT, T_GT)
    real = cv2.solvePnP

    def behind(*args: Any, **kwargs: Any) -> Any:
        ok, rvec, tvec = real(*args, **kwargs)
        refined = kwargs.get("useExtrinsicGuess", False)
        return ok, rvec, -tvec if refined else tvec  # the refinement lands on the mirrored pose, z < 0

    monkeypatch.setattr(decode_module.cv2, "solvePnP", behind)
    assert solve_pose(KP3D, kp2d[None], np.ones(1), K, "mean") is None


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"K": K}, r"K must have shape \(B, 3, 3\) for B=2 images, got \(3, 3\)"),
        ({"labels": torch.tensor([1])}, r"labels must be \(B,\) = \(2,\) classes in \[0, 2\), got \[1\]"),
        ({"labels": torch.tensor([1, 2])}, r"classes in \[0, 2\), got \[1, 2\]"),
        ({"keypoints_3d": KP3D[None]}, r"keypoints_3d must have shape \(2, 9, 3\), got \(1, 9, 3\)"),
        ({"top_k": 0}, "top_k must be an integer >= 1, got 0"),
        (
            {"aggregation": "medain"},
            r"aggregation must be one of \['mean', 'median', 'ransac'\], got 'medain'",
        ),
    ],
)
def test_bad_decoding_inputs_are_named(change: dict[str, Any], match: str) -> None:
    """Each came through as OpenCV's assertion, an IndexError, or (labels of another length) estimates of
    inconsistent lengths; a misspelt aggregation only failed once some cell was confident."""
    from lightning_modules.pose.instances import decode_instances

    centres, strides = cell_grid((64, 64), (8, 16, 32))
    n = len(centres)
    args: dict[str, Any] = {
        "logits": torch.full((2, n, 2), -8.0),
        "offsets": torch.zeros(2, n, 9, 2),
        "labels": torch.tensor([1, 0]),
        "K": np.stack([K, K]),
        "keypoints_3d": np.stack([KP3D, KP3D]),
        "centres": centres,
        "strides": strides,
        **change,
    }
    with pytest.raises(ValueError, match=match):
        decode_poses(**args)
    if "labels" not in change:
        del args["labels"]
        with pytest.raises(ValueError, match=match):
            decode_instances(**args)


def test_pose_module_checks_its_decoding_options_when_built() -> None:
    from lightning_modules.pose.module import PoseModule

    with pytest.raises(ValueError, match="aggregation must be one of"):
        PoseModule(np.stack([KP3D]), aggregation="medain")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k must be an integer >= 1, got 0"):
        PoseModule(np.stack([KP3D]), top_k=0)
