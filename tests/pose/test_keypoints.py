"""Keypoints: bounding-box corners, projection against OpenCV, canonical poses of symmetric objects."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lightning_modules.pose.keypoints import (
    Symmetries,
    bbox_keypoints,
    canonical_pose,
    model_keypoints,
    project,
    rotation_about,
    surface_keypoints,
)
from nncf_ext.errors import ConfigError

K = np.array([[150.0, 0.0, 63.5], [0.0, 150.0, 63.5], [0.0, 0.0, 1.0]])


def test_bbox_keypoints_are_the_corners_and_centre() -> None:
    pts = np.random.default_rng(0).uniform(-1, 1, (200, 3)) * [40, 20, 10] + [5, 0, 0]
    kp = bbox_keypoints(pts)
    lo, hi = pts.min(0), pts.max(0)
    assert kp.shape == (9, 3)
    expected = {(x, y, z) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])}
    assert {tuple(c) for c in kp[:8]} == expected
    np.testing.assert_allclose(kp[8], (lo + hi) / 2)
    with pytest.raises(ValueError, match="shape"):
        bbox_keypoints(np.zeros((0, 3)))


def l_block(step: float = 2.0) -> np.ndarray:
    """Surface samples of an L-shaped block: an 80 x 20 x 20 bar with a 20 x 60 x 20 bar on one end."""
    g = np.arange(0, 80 + step, step)
    pts = np.array([(x, y, z) for x in g for y in g for z in g if x <= 80 and y <= 80 and z <= 20])
    inside = ((pts[:, 1] <= 20) | (pts[:, 0] <= 20)) & (pts[:, 1] <= 80)
    pts = pts[inside]
    interior = (pts[:, 2] > 0) & (pts[:, 2] < 20) & (pts[:, 0] > 0) & (pts[:, 1] > 0)
    interior &= ((pts[:, 0] < 20) & (pts[:, 1] < 80)) | ((pts[:, 1] < 20) & (pts[:, 0] < 80))
    return pts[~interior]


def test_surface_keypoints_lie_on_the_object_and_spread_out() -> None:
    pts = l_block()
    kp = surface_keypoints(pts)
    assert kp.shape == (9, 3)
    on_model = (np.abs(pts[None] - kp[:8, None]).sum(-1) == 0).any(1)
    assert on_model.all()  # model points, unlike the box corner (80, 80, *) that floats beside the L
    assert not (np.abs(pts - bbox_keypoints(pts)[3]).sum(-1) == 0).any()
    gaps = np.linalg.norm(kp[:8, None] - kp[None, :8], axis=-1) + np.eye(8) * 1e9
    assert gaps.min() > 25  # farthest-point sampling: no two keypoints bunched together
    np.testing.assert_allclose(kp[8], (pts.min(0) + pts.max(0)) / 2)
    np.testing.assert_array_equal(surface_keypoints(pts.copy()), kp)  # deterministic
    np.testing.assert_array_equal(model_keypoints(pts, "surface"), kp)
    with pytest.raises(ConfigError, match="keypoints must be one of"):
        model_keypoints(pts, "corners")


def test_project_matches_opencv() -> None:
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(20, 3)) * 30
    R, t = rotation_about(rng.normal(size=3), 1.1), np.array([10.0, -5.0, 400.0])
    expected, _ = cv2.projectPoints(pts, cv2.Rodrigues(R)[0], t, K, None)
    np.testing.assert_allclose(project(pts, K, R, t), expected[:, 0], atol=1e-9)
    # batched: (B, P, 3) with per-sample poses
    batched = project(np.stack([pts, pts]), np.stack([K, K]), np.stack([R, np.eye(3)]), np.stack([t, t]))
    np.testing.assert_allclose(batched[0], expected[:, 0], atol=1e-9)


CYLINDER = Symmetries(continuous=((np.array([0.0, 0.0, 1.0]), np.zeros(3)),))


def test_canonical_pose_removes_the_unobservable_rotation() -> None:
    """Poses differing by a rotation about the symmetry axis look alike, so they share a canonical pose."""
    rng = np.random.default_rng(2)
    for _ in range(10):
        R, t = (
            rotation_about(rng.normal(size=3), rng.uniform(0, 3)),
            np.array([*rng.normal(size=2) * 50, 500.0]),
        )
        spun = R @ rotation_about(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * np.pi))
        R_a, t_a = canonical_pose(R, t, CYLINDER)
        R_b, t_b = canonical_pose(spun, t, CYLINDER)
        np.testing.assert_allclose(R_a, R_b, atol=1e-9)
        np.testing.assert_allclose(t_a, t_b, atol=1e-9)
        # ... and stays equivalent to the original: R^T R_a is a rotation about z
        rel = R.T @ R_a
        np.testing.assert_allclose(rel[:, 2], [0, 0, 1], atol=1e-9)
        assert np.linalg.det(R_a) == pytest.approx(1.0)


def test_canonical_pose_with_discrete_symmetry_picks_one_of_the_pair() -> None:
    flip = np.eye(4)
    flip[:3, :3] = rotation_about(np.array([0.0, 0.0, 1.0]), np.pi)
    sym = Symmetries(discrete=(flip,))
    R, t = rotation_about(np.array([0.2, 0.3, 1.0]), 2.5), np.array([0.0, 0.0, 400.0])
    a = canonical_pose(R, t, sym)
    b = canonical_pose(R @ flip[:3, :3], t, sym)
    np.testing.assert_allclose(a[0], b[0], atol=1e-12)
    assert np.trace(a[0]) >= np.trace(R) - 1e-12


def test_symmetries_about_an_axis_off_the_origin_keep_the_translation_equivalent() -> None:
    """BOP symmetries may act about a point other than the model origin: a discrete one with a translation,
    a continuous one with an ``offset``. Equivalent poses must still share their canonical pose."""
    rng = np.random.default_rng(5)
    F = rotation_about(np.array([0.0, 0.0, 1.0]), np.pi)
    p = np.array([10.0, -4.0, 0.0])  # the flip's axis passes through p: x -> F x + (I - F) p
    flip = np.eye(4)
    flip[:3, :3], flip[:3, 3] = F, (np.eye(3) - F) @ p
    offset = np.array([5.0, 8.0, 0.0])  # the cylinder's axis passes through (5, 8, 0)
    axis = np.array([0.0, 0.0, 1.0])

    def flipped() -> tuple[np.ndarray, np.ndarray]:
        return F, flip[:3, 3]

    def spun() -> tuple[np.ndarray, np.ndarray]:  # x -> S (x - o) + o
        S = rotation_about(axis, rng.uniform(0, 2 * np.pi))
        return S, offset - S @ offset

    for sym, spin in (
        (Symmetries(discrete=(flip,)), flipped),
        (Symmetries(continuous=((axis, offset),)), spun),
    ):
        for _ in range(5):
            R, t = (
                rotation_about(rng.normal(size=3), rng.uniform(0, 3)),
                np.array([*rng.normal(size=2) * 50, 500.0]),
            )
            S, d = spin()
            R_a, t_a = canonical_pose(R, t, sym)
            R_b, t_b = canonical_pose(R @ S, R @ d + t, sym)  # the same view, the other equivalent pose
            np.testing.assert_allclose(R_a, R_b, atol=1e-9)
            np.testing.assert_allclose(t_a, t_b, atol=1e-6)


def test_symmetries_from_models_info() -> None:
    info = {
        "diameter": 1.0,
        "symmetries_discrete": [list(np.eye(4).reshape(-1))],
        "symmetries_continuous": [{"axis": [0, 1, 0], "offset": [0, 0, 0]}],
    }
    sym = Symmetries.from_models_info(info)
    assert sym.symmetric and len(sym.discrete) == 1 and len(sym.continuous) == 1
    assert not Symmetries.from_models_info({"diameter": 1.0}).symmetric
    with pytest.raises(ValueError, match="symmetries_continuous"):
        Symmetries.from_models_info({"symmetries_continuous": {"axis": [0, 0, 1]}})
