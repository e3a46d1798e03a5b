"""Several instances of a class per image: grouping cells, decoding every instance, BOP-style matching."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from lightning_modules.metrics import PoseAccuracy, add_error, match_poses
from lightning_modules.pose.decode import PoseEstimates, decode_poses
from lightning_modules.pose.instances import decode_instances, group_cells
from lightning_modules.pose.keypoints import bbox_keypoints, project, rotation_about
from lightning_modules.pose.model import cell_grid
from lightning_modules.pose.module import PoseModule

K = np.array([[150.0, 0.0, 63.5], [0.0, 150.0, 63.5], [0.0, 0.0, 1.0]])
BOX = np.array([[x, y, z] for x in (-40, 40) for y in (-28, 28) for z in (-20, 20)], dtype=float)
KP3D = bbox_keypoints(BOX)
DIAMETER = float(np.linalg.norm(BOX.max(0) - BOX.min(0)))
R_A, T_A = rotation_about(np.array([0.3, -1.0, 0.4]), 0.9), np.array([-90.0, -60.0, 500.0])
R_B, T_B = rotation_about(np.array([1.0, 0.2, 0.0]), -0.6), np.array([80.0, 70.0, 450.0])
R_C, T_C = rotation_about(np.array([0.0, 0.0, 1.0]), 0.3), np.array([60.0, -80.0, 550.0])
CENTRES, STRIDES = cell_grid((128, 128), (8, 16, 32))


def near_cells(kp2d: np.ndarray, count: int) -> torch.Tensor:
    """The ``count`` stride-8 cells nearest the projected centre (the ninth keypoint)."""
    fine = STRIDES == 8
    dist = (CENTRES[fine] - torch.from_numpy(kp2d[-1]).float()).norm(dim=1)
    return torch.nonzero(fine)[:, 0][dist.argsort()[:count]]


def dense(objects: list[tuple[int, np.ndarray, np.ndarray, float]], classes: int = 2) -> tuple[Any, Any]:
    """Logits (1, N, C) and offsets (1, N, 9, 2) whose cells near each object (label, R, t, logit) vote for
    its exact keypoints; every other cell is background voting 40 px off."""
    n = len(CENTRES)
    logits = torch.full((1, n, classes), -8.0)
    offsets = torch.full((1, n, 9, 2), 40.0) / STRIDES[None, :, None, None]
    for label, R, t, logit in objects:
        kp2d = project(KP3D, K, R, t)
        cells = near_cells(kp2d, 6)
        logits[0, cells, label] = logit - torch.arange(6) * 0.1
        offsets[0, cells] = (torch.from_numpy(kp2d).float()[None] - CENTRES[cells, None]) / STRIDES[
            cells, None, None
        ]
    return logits, offsets


def test_group_cells_splits_by_centre_vote_in_score_order() -> None:
    votes = np.array([[10.0, 10.0], [11.0, 10.0], [60.0, 60.0], [61.0, 59.0], [12.0, 11.0]])
    extents = np.full(5, 20.0)
    scores = np.array([0.5, 0.9, 0.95, 0.3, 0.4])
    assert group_cells(votes, extents, scores, 0.5).tolist() == [1, 1, 0, 0, 1]
    # a smaller radius makes the farther votes (2.2 px from the seed) seeds of their own
    assert group_cells(votes, extents, scores, 0.05).tolist() == [1, 1, 0, 3, 2]
    # weak cells join an instance but seed none: at 1 px, cell 0 (1 px from seed 1) joins it, and cells 3
    # and 4 (1.4 px from the seeds) stay out
    can_seed = scores >= 0.8
    assert group_cells(votes, extents, scores, 0.5, can_seed).tolist() == [1, 1, 0, 0, 1]
    assert group_cells(votes, extents, scores, 0.05, can_seed).tolist() == [1, 1, 0, -1, -1]
    with pytest.raises(ValueError, match="radius"):
        group_cells(votes, extents, scores, 0.0)
    with pytest.raises(ValueError, match="extents"):
        group_cells(votes, extents[:4], scores, 0.5)


def test_every_instance_of_a_class_is_decoded() -> None:
    """Two boxes of class 1 and one of class 0: three poses, where the one-per-class decoder finds one."""
    logits, offsets = dense([(1, R_A, T_A, 3.0), (1, R_B, T_B, 2.0), (0, R_C, T_C, 1.0)])
    found = decode_instances(logits, offsets, K[None], np.stack([KP3D, KP3D]), CENTRES, STRIDES)
    assert len(found) == 1
    assert [d.label for d in found[0]] == [1, 1, 0]  # best first
    assert [d.score for d in found[0]] == pytest.approx(torch.sigmoid(torch.tensor([3.0, 2.0, 1.0])).tolist())
    for d, (R, t) in zip(found[0], ((R_A, T_A), (R_B, T_B), (R_C, T_C)), strict=True):
        assert add_error(d.R, d.t, R, t, BOX) < 1e-2
    # pooling the best cells of class 1 mixes both boxes' votes: neither pose is right
    single = decode_poses(
        logits, offsets, torch.tensor([1]), K[None], np.stack([KP3D, KP3D]), CENTRES, STRIDES
    )
    for R, t in ((R_A, T_A), (R_B, T_B)):
        assert add_error(single.R[0], single.t[0], R, t, BOX) > 0.1 * DIAMETER
    # at most max_instances per class and image: the best one is kept
    capped = decode_instances(
        logits, offsets, K[None], np.stack([KP3D, KP3D]), CENTRES, STRIDES, max_instances=1
    )
    assert [d.label for d in capped[0]] == [1, 0] and capped[0][0].score == found[0][0].score
    # min_score 0: every cell may seed an instance, at most max_instances per class
    loose = decode_instances(
        logits, offsets, K[None], np.stack([KP3D, KP3D]), CENTRES, STRIDES, 0.0, max_instances=3
    )
    assert sum(d.label == 1 for d in loose[0]) <= 3 and sum(d.label == 0 for d in loose[0]) <= 3
    # below min_score nothing is found
    assert decode_instances(logits, offsets, K[None], np.stack([KP3D, KP3D]), CENTRES, STRIDES, 0.99) == [[]]


def bop_match(errors: np.ndarray, scores: np.ndarray, tau: float) -> set[int]:
    """bop_toolkit's pose_matching.match_poses at one threshold, as written there: the instances matched."""
    taken: set[int] = set()
    for i in np.argsort(-scores, kind="stable")[: errors.shape[1]]:
        best, best_error = -1, tau
        for j in range(errors.shape[1]):
            if j not in taken and errors[i, j] < best_error:
                best, best_error = j, errors[i, j]
        if best >= 0:
            taken.add(best)
    return taken


def test_match_poses_follows_bop_at_every_threshold() -> None:
    """Random estimates of three or four instances: ``level < tau`` is BOP's matching at each tau."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        g, e = int(rng.integers(1, 5)), int(rng.integers(1, 6))
        R_gt = np.stack([rotation_about(rng.normal(size=3), rng.uniform(0, 3)) for _ in range(g)])
        t_gt = rng.normal(size=(g, 3)) * 80 + [0, 0, 500]
        near = rng.integers(0, g, e)  # each estimate lands near one instance, some far off
        R_est = R_gt[near] @ np.stack(
            [rotation_about(rng.normal(size=3), rng.uniform(0, 0.3)) for _ in range(e)]
        )
        t_est = t_gt[near] + rng.normal(size=(e, 3)) * rng.choice([2.0, 10.0, 60.0], (e, 1))
        scores = rng.random(e).round(1)  # ties too
        level = match_poses(R_est, t_est, scores, R_gt, t_gt, BOX, False)
        errors = np.array(
            [[add_error(R_est[i], t_est[i], R_gt[j], t_gt[j], BOX) for j in range(g)] for i in range(e)]
        )
        for tau in (0.05, 0.1, 0.2, 0.5, 1.0, 5.0):
            matched = bop_match(errors, scores, tau * DIAMETER)
            assert {j for j in range(g) if level[j] < tau * DIAMETER} == matched


def test_match_poses_by_hand() -> None:
    """The costlier best-scoring estimate takes A at a loose threshold; at a tight one BOP gives A to the
    exact one: A's level is the tight error; B takes a far estimate only at a threshold of about 2 diameters
    (the exact estimate of B scores too low to count: two instances, so the two best estimates)."""
    R_gt, t_gt = np.stack([R_A, R_B]), np.stack([T_A, T_B])
    shift = np.array([0.0, 0.0, 1.0])
    R_est, t_est = np.stack([R_A, R_A, R_B]), np.stack([T_A + 30 * shift, T_A + shift, T_B])
    level = match_poses(R_est, t_est, np.array([0.9, 0.8, 0.1]), R_gt, t_gt, BOX, False)
    assert level[0] == pytest.approx(1.0) and level[1] > DIAMETER
    # no estimates: nothing matched
    empty = match_poses(np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0), R_gt, t_gt, BOX, False)
    assert np.isnan(empty).all()
    with pytest.raises(ValueError, match="estimates"):
        match_poses(R_est, t_est[:2], np.ones(3), R_gt, t_gt, BOX, False)


def test_match_poses_uses_adds_for_symmetric_objects() -> None:
    flip = rotation_about(np.array([0.0, 0.0, 1.0]), np.pi)  # the box maps onto itself
    R_est, t_est = (R_A @ flip)[None], T_A[None]
    assert match_poses(R_est, t_est, np.ones(1), R_A[None], T_A[None], BOX, True)[0] < 1e-6
    assert match_poses(R_est, t_est, np.ones(1), R_A[None], T_A[None], BOX, False)[0] > 0.5 * DIAMETER


def image_batch(objects: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """A ``BopImageEvalDataset.collate`` batch of one image holding ``objects`` (label, R, t)."""
    m = len(objects)
    return {
        "image": torch.zeros(1, 3, 128, 128),
        "K": torch.from_numpy(K)[None],
        "image_index": torch.zeros(m, dtype=torch.long),
        "R": torch.from_numpy(np.stack([R for _, R, _ in objects])),
        "t": torch.from_numpy(np.stack([t for _, _, t in objects])),
        "label": torch.tensor([label for label, _, _ in objects]),
        "points": [torch.from_numpy(BOX)] * m,
        "diameter": torch.full((m,), DIAMETER, dtype=torch.float64),
        "symmetric": torch.zeros(m, dtype=torch.bool),
    }


def test_score_images_credits_each_instance_once(monkeypatch: pytest.MonkeyPatch) -> None:
    module = PoseModule(np.stack([KP3D, KP3D]), zoom_size=None)
    # the network sees A and C; B is a second box of A's class that it misses
    logits, offsets = dense([(1, R_A, T_A, 3.0), (0, R_C, T_C, 1.0)])
    monkeypatch.setattr(module, "forward", lambda images: (logits, offsets))
    metric = PoseAccuracy()
    module.score_images(metric, image_batch([(1, R_B, T_B), (1, R_A, T_A), (0, R_C, T_C)]))
    assert metric.per_sample()["missed"].tolist() == [True, False, False]
    assert float(metric.compute()["add_0.1d"]) == pytest.approx(2 / 3)
    # Lightning's validation step takes the per-image batches too
    module.val_metric.reset()
    module.validation_step(image_batch([(1, R_A, T_A), (1, R_A, T_A)]), 0)
    assert module.val_metric.per_sample()["missed"].tolist() == [False, True]  # one detection, one instance
    # at most max_detections instances of a class per image
    capped = PoseModule(np.stack([KP3D, KP3D]), zoom_size=None, max_detections=1)
    two, two_offsets = dense([(1, R_A, T_A, 3.0), (1, R_B, T_B, 2.0)])
    monkeypatch.setattr(capped, "forward", lambda images: (two, two_offsets))
    assert len(capped.predict_instances(torch.zeros(1, 3, 128, 128), torch.from_numpy(K)[None])[0]) == 1
    with pytest.raises(ValueError, match="max_detections"):
        PoseModule(np.stack([KP3D, KP3D]), max_detections=0)


def test_zoomed_poses_are_kept_only_on_the_same_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    module = PoseModule(np.stack([KP3D, KP3D]), zoom_size=56.0)
    logits, offsets = dense([(1, R_A, T_A, 3.0), (1, R_B, T_B, 2.0)])
    monkeypatch.setattr(module, "forward", lambda images: (logits, offsets))
    nudge = np.array([1.0, 0.0, 0.0])

    def zoom(swap: bool) -> Any:
        def zoom_in(images: Any, labels: Any, K_det: Any, est: PoseEstimates, rows: Any) -> PoseEstimates:
            order = [1, 0] if swap else [0, 1]  # a crop that decodes the neighbour, or a refined pose
            return PoseEstimates(est.R[order], est.t[order] + nudge, est.detected, est.score)

        return zoom_in

    monkeypatch.setattr(module, "_zoom_in", zoom(swap=True))
    found = module.predict_instances(torch.zeros(1, 3, 128, 128), torch.from_numpy(K)[None])
    for d, (R, t) in zip(found[0], ((R_A, T_A), (R_B, T_B)), strict=True):
        assert add_error(d.R, d.t, R, t, BOX) < 1e-2  # the neighbours' poses were refused
    monkeypatch.setattr(module, "_zoom_in", zoom(swap=False))
    found = module.predict_instances(torch.zeros(1, 3, 128, 128), torch.from_numpy(K)[None])
    for d, (R, t) in zip(found[0], ((R_A, T_A), (R_B, T_B)), strict=True):
        assert add_error(d.R, d.t, R, t + nudge, BOX) < 1e-2  # the refined poses were taken
