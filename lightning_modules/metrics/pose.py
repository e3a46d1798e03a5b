"""ADD / ADD-S pose accuracy as the BOP toolkit defines the errors (``bop_toolkit_lib/pose_error.py``).

- ADD (``add``): mean over model points x of ||(R_e x + t_e) - (R_g x + t_g)||;
- ADD-S (``adi``): mean over the ground-truth-posed points of the distance to the nearest estimated-posed
  point (``scipy.spatial.cKDTree``), used for symmetric objects;
- a pose is correct when its error is below ``k`` x the object diameter (k in 0.05, 0.1, 0.2, 0.5);
  a missed detection (no pose) is a failure;
- per depth bin: three equal-width bins of the ground-truth depth (t_z) between its minimum and maximum
  over the evaluated set, named near / medium / far;
- several instances of an object in one image: ``match_poses`` pairs estimates with instances as BOP's
  ``pose_matching`` does at every threshold, and an instance left without an estimate is missed.

Pure functions on numpy, and ``PoseAccuracy``, a torchmetrics ``Metric`` whose states are per-sample lists
concatenated across processes (``dist_reduce_fx="cat"``), so the result is the same under DDP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

THRESHOLDS = (0.05, 0.1, 0.2, 0.5)
_FLOAT_STATES = ("errors", "diameters", "depths")
_FLAG_STATES = ("symmetric", "missed")  # stored as 0 / 1 in the metric's dtype
DEPTH_BINS = ("near", "medium", "far")

ArrayLike = np.ndarray | torch.Tensor | Sequence[Any]


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _posed(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    if points.ndim != 2 or points.shape[1] != 3 or not len(points):
        raise ValueError(f"model points must be (P, 3) with P >= 1, got shape {points.shape}")
    return points @ R.T + t.reshape(1, 3)


def add_error(
    R_est: ArrayLike, t_est: ArrayLike, R_gt: ArrayLike, t_gt: ArrayLike, points: ArrayLike
) -> float:
    """ADD of one pose: mean distance between corresponding model points (P, 3) in the two poses."""
    pts = _np(points)
    est, gt = _posed(pts, _np(R_est), _np(t_est)), _posed(pts, _np(R_gt), _np(t_gt))
    return float(np.linalg.norm(est - gt, axis=1).mean())


def adds_error(
    R_est: ArrayLike, t_est: ArrayLike, R_gt: ArrayLike, t_gt: ArrayLike, points: ArrayLike
) -> float:
    """ADD-S of one pose: mean over ground-truth-posed points of the distance to the nearest estimated one."""
    pts = _np(points)
    est, gt = _posed(pts, _np(R_est), _np(t_est)), _posed(pts, _np(R_gt), _np(t_gt))
    if not np.isfinite(est).all():  # a failed estimate: NaN, a failure, as ADD gives it
        return float("nan")
    dists, _ = cKDTree(est).query(gt, k=1)
    return float(np.mean(dists))


def pose_errors(
    R_est: ArrayLike,
    t_est: ArrayLike,
    R_gt: ArrayLike,
    t_gt: ArrayLike,
    points: ArrayLike | Sequence[ArrayLike],
    symmetric: ArrayLike,
) -> np.ndarray:
    """Per-sample ADD (ADD-S where ``symmetric``): R (B, 3, 3), t (B, 3), points (B, P, 3) or B (P_i, 3)."""
    R_e, t_e, R_g, t_g = _np(R_est), _np(t_est), _np(R_gt), _np(t_gt)
    sym = _np(symmetric).astype(bool).reshape(-1)
    b = len(sym)
    if R_e.shape != (b, 3, 3) or R_g.shape != (b, 3, 3) or t_e.reshape(b, -1).shape[1] != 3:
        raise ValueError(
            f"expected R (B, 3, 3) and t (B, 3) for B={b} samples, got R_est {R_e.shape}, t_est {t_e.shape}, "
            f"R_gt {R_g.shape}"
        )
    t_e, t_g = t_e.reshape(b, 3), t_g.reshape(b, 3)
    if isinstance(points, (np.ndarray, torch.Tensor)) and np.ndim(points) == 3:
        pts = _np(points)
        if pts.shape[0] != b or pts.shape[2] != 3 or not pts.shape[1]:
            raise ValueError(f"model points must be (B, P, 3) with B={b} and P >= 1, got shape {pts.shape}")
        est = np.einsum("bij,bpj->bpi", R_e, pts) + t_e[:, None]
        gt = np.einsum("bij,bpj->bpi", R_g, pts) + t_g[:, None]
        errors = np.linalg.norm(est - gt, axis=2).mean(1)
        plist: list[np.ndarray] = list(pts)
    else:
        plist = [_np(p) for p in points]
        if len(plist) != b:
            raise ValueError(f"got {len(plist)} point sets for {b} samples")
        errors = np.array([add_error(R_e[i], t_e[i], R_g[i], t_g[i], plist[i]) for i in range(b)])
    for i in np.flatnonzero(sym):
        errors[i] = adds_error(R_e[i], t_e[i], R_g[i], t_g[i], plist[i])
    return errors


def match_poses(
    R_est: ArrayLike,
    t_est: ArrayLike,
    scores: ArrayLike,
    R_gt: ArrayLike,
    t_gt: ArrayLike,
    points: ArrayLike,
    symmetric: bool,
) -> np.ndarray:
    """BOP's matching of the estimates (E) of one object in one image to its ground-truth instances (G),
    at every threshold at once: per instance, the error level ``e`` (NaN: never matched) such that at any
    threshold ``tau``, ``e < tau`` exactly when ``bop_toolkit_lib.pose_matching.match_poses`` pairs the
    instance with an estimate.

    BOP, with the instance count known: only the ``G`` best-scoring estimates count; in descending score each
    takes the unmatched instance with the smallest ADD(-S) error below ``tau``. The matching changes only
    where ``tau`` passes one of the E x G errors, and the matched set only grows with ``tau``, so ``e`` is
    the smallest error at which the matching allowed up to it pairs the instance. ``e`` is usually the
    instance's own error; a costlier estimate can take an instance at a looser threshold, which ``e`` keeps.
    """
    R_e, t_e, R_g, t_g = _np(R_est), _np(t_est), _np(R_gt), _np(t_gt)
    score = _np(scores).reshape(-1)
    e, g = len(score), len(R_g)
    if R_e.shape != (e, 3, 3) or t_e.shape != (e, 3) or R_g.shape != (g, 3, 3) or t_g.shape != (g, 3):
        raise ValueError(
            f"expected R (n, 3, 3) and t (n, 3) for {e} estimates and {g} instances, got R_est {R_e.shape}, "
            f"t_est {t_e.shape}, R_gt {R_g.shape}, t_gt {t_g.shape}"
        )
    level = np.full(g, np.nan)
    if e == 0 or g == 0:
        return level
    best = np.argsort(-score, kind="stable")[:g]
    pts = _np(points)
    pairs = np.array([(i, j) for i in best for j in range(g)], dtype=np.int64).reshape(-1, 2)
    errors = pose_errors(
        R_e[pairs[:, 0]],
        t_e[pairs[:, 0]],
        R_g[pairs[:, 1]],
        t_g[pairs[:, 1]],
        np.broadcast_to(pts, (len(pairs), *pts.shape)),
        np.full(len(pairs), symmetric),
    ).reshape(len(best), g)
    for limit in np.unique(errors):  # ascending: each instance keeps the first level that pairs it
        taken = np.zeros(g, dtype=bool)
        for row in errors:
            allowed = np.where(~taken & (row <= limit), row, np.inf)
            j = int(np.argmin(allowed))
            if np.isfinite(allowed[j]):
                taken[j] = True
        level[taken & np.isnan(level)] = limit
    return level


def depth_bins(depths: ArrayLike, bins: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Bin index (B,) of each depth in ``bins`` equal-width bins between min and max, and the edges."""
    d = _np(depths).reshape(-1)
    if d.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(bins + 1)
    edges = np.linspace(d.min(), d.max(), bins + 1)
    index = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, bins - 1)
    return index, edges


def pose_accuracy(
    errors: ArrayLike,
    diameters: ArrayLike,
    depths: ArrayLike,
    missed: ArrayLike | None = None,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, float]:
    """Fraction of correct poses (error < k x diameter, not missed) per threshold, overall and per depth bin.

    Keys: ``add_<k>d`` and ``add_<k>d_<near|medium|far>`` (ADD-S for symmetric objects: the errors decide),
    ``count`` / ``count_<bin>`` and ``missed`` (fraction of samples without a pose). Empty bins give NaN.
    """
    err, diam = _np(errors).reshape(-1), _np(diameters).reshape(-1)
    miss = np.zeros(err.shape, dtype=bool) if missed is None else _np(missed).astype(bool).reshape(-1)
    if not (err.shape == diam.shape == miss.shape == _np(depths).reshape(-1).shape):
        raise ValueError("errors, diameters, depths and missed must have one entry per sample")
    bin_index, _ = depth_bins(depths, len(DEPTH_BINS))
    out: dict[str, float] = {
        "count": float(err.size),
        "missed": float(miss.mean()) if err.size else float("nan"),
    }
    for k in thresholds:
        correct = ~miss & (np.nan_to_num(err, nan=np.inf) < k * diam)
        out[f"add_{k:g}d"] = float(correct.mean()) if err.size else float("nan")
        for i, name in enumerate(DEPTH_BINS):
            sel = bin_index == i
            out[f"add_{k:g}d_{name}"] = float(correct[sel].mean()) if sel.any() else float("nan")
    for i, name in enumerate(DEPTH_BINS):
        out[f"count_{name}"] = float((bin_index == i).sum())
    return out


class PoseAccuracy(Metric):
    """ADD(-S) accuracy at fractions of the diameter, overall and per depth bin (see ``pose_accuracy``).

    ``update`` takes estimated and ground-truth poses per sample (plain tensors or arrays, so poses from an
    exported model work too), the model points, diameters and symmetric flags, and ``detected`` (False:
    missed, counted as a failure). Errors are computed at update; compute() needs only per-sample states.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds: Sequence[float] = THRESHOLDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thresholds = tuple(float(k) for k in thresholds)
        for name in (*_FLOAT_STATES, *_FLAG_STATES):
            self.add_state(name, default=[], dist_reduce_fx="cat")
        # every state in float64, the metric's dtype: a process without updates syncs an empty tensor of
        # the metric's dtype, which must match the others' (torchmetrics' gather needs one dtype)
        self.set_dtype(torch.float64)

    def _apply(self, fn: Callable[..., Any], exclude_state: Sequence[str] = ()) -> torch.nn.Module:
        # torchmetrics resets the dtype to that of fn(float32 zeros) on every .to(device): keep float64, so
        # that a moved metric (Lightning moves it with the module) still accumulates in float64
        this = super()._apply(fn, exclude_state)
        assert isinstance(this, PoseAccuracy)
        this._dtype = torch.float64
        for name in (*_FLOAT_STATES, *_FLAG_STATES):
            setattr(this, name, [t.to(torch.float64) for t in getattr(this, name)])
        return this

    def update(
        self,
        R_est: ArrayLike | None,
        t_est: ArrayLike | None,
        R_gt: ArrayLike,
        t_gt: ArrayLike,
        points: ArrayLike | Sequence[ArrayLike],
        diameters: ArrayLike,
        symmetric: ArrayLike,
        detected: ArrayLike | None = None,
        errors: ArrayLike | None = None,
    ) -> None:
        """Estimated and ground-truth poses per sample, or ``errors`` computed by the caller (the levels of
        ``match_poses`` for several instances per image; NaN: missed) with ``R_est = t_est = None``."""
        sym = _np(symmetric).astype(bool).reshape(-1)
        det = np.ones_like(sym) if detected is None else _np(detected).astype(bool).reshape(-1)
        diam = _np(diameters).reshape(-1)
        given = None if errors is None else _np(errors).reshape(-1)
        if not (len(det) == len(diam) == len(sym)):
            raise ValueError(
                f"detected and diameters need {len(sym)} entries, got {len(det)} and {len(diam)}"
            )
        if given is not None and len(given) != len(sym):
            raise ValueError(f"errors need {len(sym)} entries, got {len(given)}")
        if len(sym) == 0:
            return
        if given is not None:
            det = det & ~np.isnan(given)
            errors_np = given.copy()
        elif R_est is None or t_est is None:
            raise ValueError("give the estimated poses, or the errors")
        else:
            errors_np = pose_errors(R_est, t_est, R_gt, t_gt, points, sym)
        errors_np[~det] = np.nan
        depth = _np(t_gt).reshape(len(sym), 3)[:, 2]
        values = {"errors": errors_np, "diameters": diam, "depths": depth, "symmetric": sym, "missed": ~det}
        for name, value in values.items():
            state: list[torch.Tensor] = getattr(self, name)
            state.append(torch.as_tensor(value, dtype=self.dtype, device=self.device))

    def _cat(self, name: str) -> np.ndarray:
        state = getattr(self, name)
        empty = isinstance(state, list) and not state
        values = np.zeros(0) if empty else dim_zero_cat(state).cpu().numpy()
        return values.astype(bool) if name in _FLAG_STATES else values

    def compute(self) -> dict[str, torch.Tensor]:
        result = pose_accuracy(
            self._cat("errors"),
            self._cat("diameters"),
            self._cat("depths"),
            self._cat("missed"),
            self.thresholds,
        )
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in result.items()}

    def per_sample(self) -> dict[str, np.ndarray]:
        """The accumulated per-sample errors, diameters, depths, symmetric and missed flags."""
        return {name: self._cat(name) for name in (*_FLOAT_STATES, *_FLAG_STATES)}
