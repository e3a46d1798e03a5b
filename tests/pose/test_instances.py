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
    # below min_score nothing is found
    assert decode_instances(logits, offsets, K[None], np.stack([KP3D, KP3D]), CENTRES, STRIDES, 0.99) == [[]]


def test_match_poses_follows_bop_score_order_and_instance_count() -> None:
    R_gt, t_gt = np.stack([R_A, R_B]), np.stack([T_A, T_B])
    shift = np.array([0.0, 0.0, 5.0])  # an ADD error of 5 mm
    R_est = np.stack([R_A, R_B, R_B, R_A])
    t_est = np.stack([T_A + shift, T_B, T_B + 2 * shift, T_A])
    scores = np.array([0.9, 0.5, 0.95, 0.1])
    match, error = match_poses(R_est, t_est, scores, R_gt, t_gt, BOX, False, DIAMETER)
    # estimate 2 (best score) takes B although estimate 1 is exact; estimate 0 takes A; only the two best
    # count (two instances), so the exact estimate 3 is never used
    assert match.tolist() == [0, 2]
    np.testing.assert_allclose(error, [5.0, 10.0])
    # an estimate too far from every instance takes none and leaves it to the next one
    far = np.stack([T_A + 100 * shift, T_B])
    match, error = match_poses(R_gt, far, np.array([0.9, 0.8]), R_gt, t_gt, BOX, False, DIAMETER, 0.5)
    assert match.tolist() == [-1, 1] and np.isnan(error[0])
    # no estimates: every instance unmatched
    match, _ = match_poses(
        np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0), R_gt, t_gt, BOX, False, DIAMETER
    )
    assert match.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="estimates"):
        match_poses(R_est, t_est[:2], scores, R_gt, t_gt, BOX, False, DIAMETER)


def test_match_poses_uses_adds_for_symmetric_objects() -> None:
    flip = rotation_about(np.array([0.0, 0.0, 1.0]), np.pi)  # the box maps onto itself
    R_est, t_est = (R_A @ flip)[None], T_A[None]
    match, error = match_poses(R_est, t_est, np.ones(1), R_A[None], T_A[None], BOX, True, DIAMETER, 0.05)
    assert match.tolist() == [0] and error[0] < 1e-6
    match, _ = match_poses(R_est, t_est, np.ones(1), R_A[None], T_A[None], BOX, False, DIAMETER, 0.05)
    assert match.tolist() == [-1]


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


def test_zoomed_poses_are_kept_only_on_the_same_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    module = PoseModule(np.stack([KP3D, KP3D]), zoom_size=56.0)
    logits, offsets = dense([(1, R_A, T_A, 3.0), (1, R_B, T_B, 2.0)])
    monkeypatch.setattr(module, "forward", lambda images: (logits, offsets))
    nudge = np.array([1.0, 0.0, 0.0])

    def zoom(swap: bool) -> Any:
        def zoom_in(images: Any, labels: Any, K_det: Any, est: PoseEstimates) -> PoseEstimates:
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
