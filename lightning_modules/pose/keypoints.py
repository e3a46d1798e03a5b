"""Object keypoints (8 bounding-box corners or 8 surface points, + centre), projection, and
symmetry-canonical poses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nncf_ext.errors import ConfigError

NUM_KEYPOINTS = 9


def bbox_keypoints(points: np.ndarray) -> np.ndarray:
    """The 8 corners of the axis-aligned 3D bounding box of ``points`` (N, 3), then its centre: (9, 3)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points must have shape (N, 3) with N > 0, got {points.shape}")
    lo, hi = points.min(0), points.max(0)
    bits = (np.arange(8)[:, None] >> np.arange(3)[None, :]) & 1  # corner i takes hi where bit is set
    corners = np.where(bits.astype(bool), hi, lo)
    return np.concatenate([corners, ((lo + hi) / 2)[None]], axis=0)


def surface_keypoints(points: np.ndarray, count: int = 8) -> np.ndarray:
    """``count`` model points spread by farthest-point sampling (as PVNet), then the bounding-box centre.

    Unlike the corners of the bounding box, which float in the air beside a non-convex object (an L-shaped
    block), these lie on the object and so are seen in the image. Sampling starts from the point farthest
    from the centre; deterministic.
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"points must have shape (N, 3) with N > 0, got {points.shape}")
    centre = (points.min(0) + points.max(0)) / 2
    chosen = [int(np.argmax(((points - centre) ** 2).sum(1)))]
    nearest = ((points - points[chosen[0]]) ** 2).sum(1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(nearest)))
        nearest = np.minimum(nearest, ((points - points[chosen[-1]]) ** 2).sum(1))
    return np.concatenate([points[chosen], centre[None]], axis=0)


KEYPOINTS = {"bbox": bbox_keypoints, "surface": surface_keypoints}


def check_keypoints_kind(kind: str) -> None:
    """Raise a ``ConfigError`` unless ``kind`` names a keypoint set of ``KEYPOINTS``."""
    if kind not in KEYPOINTS:
        raise ConfigError("keypoints", f"keypoints must be one of {sorted(KEYPOINTS)}, got {kind!r}")


def model_keypoints(points: np.ndarray, kind: str = "bbox") -> np.ndarray:
    """The 9 keypoints of a model: ``"bbox"`` (WDR: box corners + centre) or ``"surface"`` (FPS + centre)."""
    check_keypoints_kind(kind)
    return KEYPOINTS[kind](points)


def transform(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Model points (..., P, 3) into the camera frame: ``R x + t`` with R (..., 3, 3), t (..., 3)."""
    return np.einsum("...ij,...pj->...pi", R, points) + np.asarray(t)[..., None, :]


def project(points: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Pixel coordinates (..., P, 2) of model points (..., P, 3) under pose (R, t) and intrinsics K."""
    cam = transform(points, R, t)
    uvw = np.einsum("...ij,...pj->...pi", K, cam)
    return uvw[..., :2] / uvw[..., 2:3]


@dataclass(frozen=True)
class Symmetries:
    """BOP symmetries of one object: discrete 4x4 transforms and continuous (axis, offset) rotations."""

    discrete: tuple[np.ndarray, ...] = ()
    continuous: tuple[tuple[np.ndarray, np.ndarray], ...] = field(default=())

    @property
    def symmetric(self) -> bool:
        return bool(self.discrete or self.continuous)

    @staticmethod
    def from_models_info(info: dict[str, object]) -> Symmetries:
        """Parse ``symmetries_discrete`` (4x4, flattened) / ``symmetries_continuous`` of models_info."""
        discrete = tuple(
            np.asarray(m, dtype=np.float64).reshape(4, 4)
            for m in _as_list(info.get("symmetries_discrete", []), "symmetries_discrete")
        )
        continuous = tuple(
            (
                np.asarray(s["axis"], dtype=np.float64).reshape(3),
                np.asarray(s.get("offset", [0, 0, 0]), dtype=np.float64).reshape(3),
            )
            for s in _as_list(info.get("symmetries_continuous", []), "symmetries_continuous")
        )
        return Symmetries(discrete, continuous)


def _as_list(value: object, name: str) -> list[dict]:
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a list, got {type(value).__name__}")
    return value


def rotation_about(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about a unit ``axis``."""
    a = axis / np.linalg.norm(axis)
    skew = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * skew + (1 - np.cos(angle)) * skew @ skew


def _canonical_continuous(
    R: np.ndarray, t: np.ndarray, axis: np.ndarray, offset: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate about the symmetry axis so that a fixed in-plane object direction faces the camera."""
    a = axis / np.linalg.norm(axis)
    u = np.cross(a, [1.0, 0.0, 0.0] if abs(a[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    a_cam = R @ a
    view = -(R @ offset + t)
    w = view - (view @ a_cam) * a_cam
    if np.linalg.norm(w) < 1e-9 * max(
        float(np.linalg.norm(view)), 1.0
    ):  # looking along the axis: use camera x
        w = np.array([1.0, 0.0, 0.0]) - a_cam[0] * a_cam
    target = R.T @ (w / np.linalg.norm(w))
    angle = np.arctan2(a @ np.cross(u, target), u @ target)
    R_sym = rotation_about(a, angle)
    R_new = R @ R_sym
    t_new = t + R @ offset - R_new @ offset
    return R_new, t_new


def canonical_pose(
    R: np.ndarray, t: np.ndarray, symmetries: Symmetries, roll: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The symmetry-equivalent pose that is a function of the object's appearance alone.

    Keypoints of a symmetric object are ambiguous; training on this canonical pose makes their targets
    learnable. Continuous symmetries: the rotation about the axis that turns a fixed object direction
    towards the camera. Discrete symmetries: among the (canonicalised) equivalent poses, the one whose
    rotation is closest to the identity (largest trace).

    ``roll`` (3 x 3, about the optical axis) makes the choice for the camera rolled by it, the camera of an
    image rotated in-plane by augmentation, and returns that pose in the unrolled camera: the largest-trace
    rule is not invariant to a roll, so an augmented image would otherwise get the other symmetric
    keypoint assignment than a real image of the same view.
    """
    R = np.asarray(R, dtype=np.float64)
    t = np.asarray(t, dtype=np.float64).reshape(3)
    if roll is not None:
        R_r, t_r = canonical_pose(roll @ R, roll @ t, symmetries)
        return roll.T @ R_r, roll.T @ t_r
    candidates = [(R, t)]
    for sym in symmetries.discrete:
        candidates.append((R @ sym[:3, :3], R @ sym[:3, 3] + t))
    out = []
    for R_c, t_c in candidates:
        for axis, offset in symmetries.continuous:
            R_c, t_c = _canonical_continuous(R_c, t_c, axis, offset)
        out.append((R_c, t_c))
    best = int(np.argmax([np.trace(R_c) for R_c, _ in out]))
    return out[best]


def keypoints_2d(
    keypoints_3d: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    symmetries: Symmetries | None = None,
    roll: np.ndarray | None = None,
) -> np.ndarray:
    """Projected keypoints (9, 2) of an object, in the canonical pose when it has symmetries (chosen for the
    camera rolled by ``roll``, see :func:`canonical_pose`)."""
    if symmetries is not None and symmetries.symmetric:
        R, t = canonical_pose(R, t, symmetries, roll)
    return project(keypoints_3d, K, R, np.asarray(t).reshape(3))


def stack_keypoints(keypoints: Sequence[np.ndarray]) -> np.ndarray:
    """Keypoints of several objects as one (C, 9, 3) array (class index = position)."""
    return np.stack([np.asarray(k, dtype=np.float64).reshape(NUM_KEYPOINTS, 3) for k in keypoints])
