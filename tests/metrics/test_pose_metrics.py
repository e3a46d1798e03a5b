"""ADD / ADD-S against hand-computed values, thresholds, depth bins, missed detections, DDP-style merging."""

from __future__ import annotations

import math
import socket
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lightning_modules.metrics import (
    PoseAccuracy,
    add_error,
    adds_error,
    depth_bins,
    pose_accuracy,
    pose_errors,
)
from lightning_modules.pose.keypoints import rotation_about

UNIT = np.eye(3)  # points (1,0,0), (0,1,0), (0,0,1)
RZ90 = rotation_about(np.array([0.0, 0.0, 1.0]), math.pi / 2)


def cylinder_points(radius: float = 30.0, height: float = 80.0, segments: int = 360) -> np.ndarray:
    ang = np.linspace(0, 2 * np.pi, segments, endpoint=False)
    rings = [
        np.stack([radius * np.cos(ang), radius * np.sin(ang), np.full_like(ang, z)], 1) for z in (-40, 0, 40)
    ]
    return np.concatenate(rings)


def test_identity_pose_has_zero_error() -> None:
    pts = np.random.default_rng(0).normal(size=(50, 3))
    R, t = rotation_about(np.array([1.0, 2.0, 3.0]), 0.7), np.array([5.0, -2.0, 300.0])
    assert add_error(R, t, R, t, pts) == pytest.approx(0.0, abs=1e-12)
    assert adds_error(R, t, R, t, pts) == pytest.approx(0.0, abs=1e-12)


def test_pure_translation_gives_add_equal_to_its_length() -> None:
    pts = np.random.default_rng(1).normal(size=(40, 3)) * 50
    R = rotation_about(np.array([0.0, 1.0, 0.0]), 0.3)
    t = np.array([0.0, 0.0, 500.0])
    shift = np.array([3.0, 4.0, 12.0])  # length 13
    assert add_error(R, t + shift, R, t, pts) == pytest.approx(13.0)


def test_hand_computed_rotation_errors() -> None:
    t = np.zeros(3)
    # (1,0,0)->(0,1,0) and (0,1,0)->(-1,0,0) move by sqrt(2); (0,0,1) stays: mean 2 sqrt(2) / 3
    assert add_error(RZ90, t, np.eye(3), t, UNIT) == pytest.approx(2 * math.sqrt(2) / 3)
    # nearest estimated point: (1,0,0) -> sqrt(2), (0,1,0) -> 0, (0,0,1) -> 0
    assert adds_error(RZ90, t, np.eye(3), t, UNIT) == pytest.approx(math.sqrt(2) / 3)
    # the BOP definition is not symmetric in (est, gt): swapping gives the same here by construction only
    assert adds_error(np.eye(3), t, RZ90, t, UNIT) == pytest.approx(math.sqrt(2) / 3)


def test_general_rotations_against_hand_posed_points() -> None:
    """R x + t written out per point, for rotations that are not their own transpose's equivalent."""
    rng = np.random.default_rng(4)
    pts = rng.normal(size=(30, 3)) * 40
    poses = [
        (rotation_about(rng.normal(size=3), a), rng.normal(size=3) * 20 + [0, 0, 400]) for a in (0.8, 2.1)
    ]
    (R_e, t_e), (R_g, t_g) = poses
    est = np.array([R_e @ x + t_e for x in pts])
    gt = np.array([R_g @ x + t_g for x in pts])
    add = float(np.mean(np.linalg.norm(est - gt, axis=1)))
    adds = float(np.mean([np.min(np.linalg.norm(est - g, axis=1)) for g in gt]))  # BOP adi: gt -> nearest est
    assert add_error(R_e, t_e, R_g, t_g, pts) == pytest.approx(add)
    assert adds_error(R_e, t_e, R_g, t_g, pts) == pytest.approx(adds)
    # batched (one array of points) and per-sample (a list) forms agree with the single-pose functions
    for points in (np.stack([pts, pts]), [pts, pts]):
        errors = pose_errors(
            np.stack([R_e, R_g]),
            np.stack([t_e, t_g]),
            np.stack([R_g, R_e]),
            np.stack([t_g, t_e]),
            points,
            [0, 1],
        )
        assert errors == pytest.approx([add, adds_error(R_g, t_g, R_e, t_e, pts)])


def test_adds_measures_from_the_ground_truth_points() -> None:
    """The nearest-neighbour direction matters when the posed sets differ in spread (BOP's adi)."""
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [10.0, 0.0, 0.0]])
    squash = np.diag([0.1, 1.0, 1.0])  # not a rotation, but it shows the direction: gt spread, est squashed
    t = np.zeros(3)
    # gt points 0, 1, 10 to the nearest of est 0, 0.1, 1: 0, 0, 9 -> mean 3
    assert adds_error(squash, t, np.eye(3), t, pts) == pytest.approx(3.0)


def test_symmetric_object_rotated_about_its_axis() -> None:
    pts = cylinder_points()
    diameter = math.hypot(60.0, 80.0)
    R_gt, t = np.eye(3), np.array([10.0, 20.0, 600.0])
    angle = math.radians(37.5)  # not a multiple of the 1 degree point spacing
    R_est = rotation_about(np.array([0.0, 0.0, 1.0]), angle)
    assert adds_error(R_est, t, R_gt, t, pts) < 0.005 * diameter
    # every point moves along a chord of its circle of radius 30
    assert add_error(R_est, t, R_gt, t, pts) == pytest.approx(2 * 30.0 * math.sin(angle / 2))
    errors = pose_errors(
        np.stack([R_est, R_est]),
        np.stack([t, t]),
        np.stack([R_gt, R_gt]),
        np.stack([t, t]),
        np.stack([pts, pts]),
        [False, True],
    )
    assert errors[0] == pytest.approx(add_error(R_est, t, R_gt, t, pts))
    assert errors[1] == pytest.approx(adds_error(R_est, t, R_gt, t, pts))


def test_pose_errors_accepts_point_lists_and_tensors() -> None:
    rng = np.random.default_rng(2)
    pts = [rng.normal(size=(n, 3)) for n in (10, 25)]
    R = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    t_est = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    errors = pose_errors(
        R, t_est, R, torch.zeros(2, 3, dtype=torch.float64), pts, torch.tensor([False, False])
    )
    np.testing.assert_allclose(errors, [1.0, 2.0])
    with pytest.raises(ValueError, match="point sets"):
        pose_errors(R, t_est, R, torch.zeros(2, 3), pts[:1], [False, False])
    with pytest.raises(ValueError, match=r"R \(B, 3, 3\)"):
        pose_errors(R[:1], t_est, R, torch.zeros(2, 3), pts, [False, False])


def test_depth_bins_are_equal_width_between_min_and_max() -> None:
    index, edges = depth_bins([100, 200, 300, 400, 500, 600, 700])
    np.testing.assert_allclose(edges, [100, 300, 500, 700])
    np.testing.assert_array_equal(index, [0, 0, 1, 1, 2, 2, 2])  # the maximum belongs to "far"


def test_accuracy_thresholds_and_bins() -> None:
    diam = np.full(6, 100.0)
    errors = np.array([4.0, 9.0, 15.0, 40.0, 60.0, 1.0])  # fractions 0.04, 0.09, 0.15, 0.4, 0.6, 0.01
    depths = np.array([100.0, 100.0, 400.0, 400.0, 700.0, 700.0])
    acc = pose_accuracy(errors, diam, depths)
    assert acc["add_0.05d"] == pytest.approx(2 / 6)
    assert acc["add_0.1d"] == pytest.approx(3 / 6)
    assert acc["add_0.2d"] == pytest.approx(4 / 6)
    assert acc["add_0.5d"] == pytest.approx(5 / 6)
    assert (acc["add_0.1d_near"], acc["add_0.1d_medium"], acc["add_0.1d_far"]) == (1.0, 0.0, 0.5)
    assert (acc["count_near"], acc["count_medium"], acc["count_far"]) == (2.0, 2.0, 2.0)
    # an error exactly at the threshold is not below it
    assert pose_accuracy([10.0], [100.0], [1.0])["add_0.1d"] == 0.0


def test_depth_bins_follow_the_ground_truth_depth() -> None:
    """A missed detection reports t = 0: the bins must come from the ground truth, not the estimate."""
    metric = PoseAccuracy()
    R = np.stack([np.eye(3)] * 3)
    t_gt = np.array([[0.0, 0.0, 300.0], [0.0, 0.0, 450.0], [0.0, 0.0, 600.0]])
    t_est = np.array([[0.0, 0.0, 300.0], [0.0, 0.0, 450.0], [0.0, 0.0, 0.0]])
    metric.update(R, t_est, R, t_gt, np.stack([UNIT] * 3), [10.0] * 3, [False] * 3, [True, True, False])
    result = metric.compute()
    assert [float(result[f"count_{b}"]) for b in ("near", "medium", "far")] == [1.0, 1.0, 1.0]
    assert float(result["add_0.1d_far"]) == 0.0 and float(result["add_0.1d_near"]) == 1.0


def test_missed_detection_counts_as_failure() -> None:
    acc = pose_accuracy([0.0, 0.0], [100.0, 100.0], [300.0, 600.0], missed=[False, True])
    assert acc["add_0.5d"] == 0.5
    assert acc["missed"] == 0.5
    assert acc["add_0.5d_far"] == 0.0  # the missed one is the far one

    metric = PoseAccuracy()
    R, t = torch.eye(3).repeat(2, 1, 1), torch.tensor([[0.0, 0.0, 300.0], [0.0, 0.0, 600.0]])
    metric.update(
        R,
        t,
        R,
        t,
        torch.zeros(2, 4, 3),
        torch.tensor([100.0, 100.0]),
        torch.tensor([False, False]),
        detected=torch.tensor([True, False]),
    )
    out = metric.compute()
    assert float(out["add_0.1d"]) == 0.5 and float(out["count"]) == 2.0


def _random_batch(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    R_gt = np.stack([rotation_about(rng.normal(size=3), rng.uniform(0, 3)) for _ in range(n)])
    R_est = np.stack([r @ rotation_about(rng.normal(size=3), rng.uniform(0, 0.2)) for r in R_gt])
    t_gt = np.concatenate([rng.normal(size=(n, 2)) * 50, rng.uniform(200, 900, (n, 1))], 1)
    return {
        "R_est": R_est,
        "t_est": t_gt + rng.normal(size=(n, 3)) * 8,
        "R_gt": R_gt,
        "t_gt": t_gt,
        "points": rng.normal(size=(n, 30, 3)) * 40,
        "diameters": np.full(n, 150.0),
        "symmetric": rng.random(n) < 0.3,
        "detected": rng.random(n) < 0.9,
    }


def test_metric_accumulates_and_merges_like_ddp() -> None:
    """Depth bins use the global min/max: split, merged states must give exactly the single-pass result."""
    a, b = _random_batch(0, 20), _random_batch(1, 13)
    whole = {k: np.concatenate([a[k], b[k]]) for k in a}
    single = PoseAccuracy()
    single.update(**whole)
    rank0, rank1 = PoseAccuracy(), PoseAccuracy()
    rank0.update(**a)
    rank1.update(**b)
    rank0.merge_state(rank1)  # what "cat" reduction does across processes
    expected, merged = single.compute(), rank0.compute()
    assert merged.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], equal_nan=True)
    errors = pose_errors(
        whole["R_est"], whole["t_est"], whole["R_gt"], whole["t_gt"], whole["points"], whole["symmetric"]
    )
    func = pose_accuracy(errors, whole["diameters"], whole["t_gt"][:, 2], ~whole["detected"])
    assert float(expected["add_0.2d_far"]) == pytest.approx(func["add_0.2d_far"])
    assert 0.0 < float(expected["add_0.2d"]) < 1.0  # the fixture is neither trivially right nor wrong


@pytest.mark.parametrize("move", [lambda m: m.to("cpu"), lambda m: m.to(torch.bfloat16), lambda m: m.half()])
def test_metric_accumulates_in_float64_wherever_it_is_moved(move: Any) -> None:
    """Lightning moves the metric with its module: torchmetrics would reset the dtype to float32 (or bf16)."""
    metric = PoseAccuracy()
    metric.update(**_random_batch(0, 5))
    move(metric)
    metric.update(**_random_batch(1, 5))
    assert metric.dtype == torch.float64
    assert all(t.dtype == torch.float64 for name in ("errors", "missed") for t in getattr(metric, name))


def test_metric_ignores_empty_updates_and_checks_lengths_first() -> None:
    metric = PoseAccuracy()
    empty = np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3))
    metric.update(*empty, np.zeros((0, 5, 3)), [], [], [])  # an empty batch adds nothing
    batch = _random_batch(0, 4)
    metric.update(**batch)
    assert float(metric.compute()["count"]) == 4
    with pytest.raises(ValueError, match="detected and diameters need 4 entries, got 3"):
        metric.update(**{**batch, "detected": batch["detected"][:3]})


def _ddp_worker(rank: int, port: int, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    metric = PoseAccuracy()
    if rank == 0:  # rank 1 sees no sample (a custom sampler, an iterable data set)
        metric.update(**_random_batch(0, 20))
    out[rank] = {k: float(v) for k, v in metric.compute().items()}
    out[f"missed_dtype_{rank}"] = str(metric.per_sample()["missed"].dtype)
    dist.destroy_process_group()


def test_metric_syncs_when_a_process_had_no_update() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(port, out), nprocs=2, join=True)
    single = PoseAccuracy()
    single.update(**_random_batch(0, 20))
    expected = {k: float(v) for k, v in single.compute().items()}
    for rank in (0, 1):
        assert out[rank] == pytest.approx(expected, nan_ok=True)
        assert out[f"missed_dtype_{rank}"] == "bool"


def test_metric_takes_errors_computed_by_the_caller() -> None:
    """Several instances per image: the errors are match_poses' levels, NaN where nothing matched."""
    metric = PoseAccuracy()
    t = np.array([[0.0, 0.0, 400.0]] * 3)
    metric.update(None, None, np.stack([np.eye(3)] * 3), t, np.stack([UNIT] * 3), [10.0] * 3, [False] * 3,
                  errors=[0.5, np.nan, 3.0])  # fmt: skip
    result = metric.compute()
    assert float(result["add_0.1d"]) == pytest.approx(1 / 3) and float(result["add_0.5d"]) == pytest.approx(
        2 / 3
    )
    assert float(result["missed"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="errors need 3 entries"):
        metric.update(
            None, None, np.stack([np.eye(3)] * 3), t, np.stack([UNIT] * 3), [10.0] * 3, [0] * 3, errors=[1.0]
        )
    with pytest.raises(ValueError, match="estimated poses, or the errors"):
        metric.update(None, None, np.stack([np.eye(3)] * 3), t, np.stack([UNIT] * 3), [10.0] * 3, [0] * 3)


def test_a_non_finite_estimate_is_a_failure_for_symmetric_objects_too() -> None:
    """ADD gives NaN (a failure); ADD-S raised scipy's "data must be finite", so a diverged estimate crashed
    evaluation only where an object is symmetric."""
    R = np.stack([np.eye(3)] * 2)
    t_gt = np.array([[0.0, 0.0, 500.0]] * 2)
    t_est = t_gt.copy()
    t_est[:, 2] = np.nan
    errors = pose_errors(R, t_est, R, t_gt, np.stack([cylinder_points()] * 2), [False, True])
    assert np.isnan(errors).all()
    acc = pose_accuracy(errors, [150.0, 150.0], [500.0, 500.0])
    assert acc["add_0.1d"] == 0.0 and acc["count"] == 2.0


@pytest.mark.parametrize("points", [np.zeros((0, 3)), np.zeros((4, 2))])
def test_model_points_of_the_wrong_shape_are_named(points: np.ndarray) -> None:
    """No points gave a NaN error silently (every pose a failure); two coordinates, numpy's broadcast error."""
    with pytest.raises(ValueError, match=r"model points must be \(P, 3\) with P >= 1"):
        add_error(UNIT, np.zeros(3), UNIT, np.zeros(3), points)
    with pytest.raises(ValueError, match=r"model points must be \(P, 3\) with P >= 1"):
        adds_error(UNIT, np.zeros(3), UNIT, np.zeros(3), points)
    with pytest.raises(ValueError, match=r"model points must be \(B, P, 3\) with B=1"):
        pose_errors(UNIT[None], np.zeros((1, 3)), UNIT[None], np.zeros((1, 3)), points[None], [False])
