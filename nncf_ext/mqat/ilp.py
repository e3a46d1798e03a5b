"""Bit allocation by integer linear programming (HAWQ-V3, MQAT): one bit-width per module, the least
summed sensitivity, under a size budget (and optional extra budgets such as BOPs or measured latency).

This is a multiple-choice knapsack. It is solved exactly with ``scipy.optimize.milp`` (HiGHS) after two
exact reductions that make HiGHS fast on it:

* **Reduced-cost fixing.** The Lagrangian relaxation of the size budget (multiplier ``lam``) gives a lower
  bound ``L``; a greedy allocation gives a feasible upper bound ``U``. A choice whose reduced cost ``r``
  has ``L + r > U`` cannot be in an optimum and is dropped. Typically 80% of the choices go, and most
  modules are left with one.
* **Incremental form.** For the modules still open, binary ``y[m, j] = 1`` means "at least the j-th
  smallest remaining choice", ``y[m, j] >= y[m, j+1]``: the same integer points as one-hot variables,
  with far less branching in HiGHS.

Tied modules are merged into one (summed costs and sizes) before solving.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from nncf_ext.errors import ConfigError, NNCFExtError


@dataclass(frozen=True)
class ExtraBudget:
    """Another linear budget: ``sum cost[m][b] * x[m, b] <= limit`` (e.g. BOPs or latency in ms)."""

    name: str
    cost: Mapping[str, Mapping[int, float]]
    limit: float


def _tie_groups(modules: list[str], ties: Sequence[Sequence[str]]) -> list[list[str]]:
    """Modules partitioned into groups that share one bit-width (overlapping ties are joined)."""
    parent = {m: m for m in modules}

    def root(m: str) -> str:
        while parent[m] != m:
            m = parent[m]
        return m

    for group in ties:
        for m in group:
            if m not in parent:
                raise ConfigError("ties", f"tied module '{m}' has no sensitivity")
        for other in group[1:]:
            parent[root(other)] = root(group[0])
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(root(m), []).append(m)
    return list(groups.values())


def _reduced(cost: np.ndarray, size: np.ndarray, lam: float) -> np.ndarray:
    """``cost + lam * size``, +inf at padded choices (where ``0 * inf`` would give NaN)."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(cost), cost + lam * size, np.inf)


def _lagrangian(cost: np.ndarray, size: np.ndarray, budget: float) -> tuple[float, float]:
    """``(lam, L)`` maximising ``L(lam) = sum_g min_j (cost + lam * size) - lam * budget`` over ``lam >= 0``.

    ``L`` is concave and piecewise linear; its maximum lies at a breakpoint where the smallest size among the
    minimisers stops exceeding the budget, found by bisection over the sorted breakpoints.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        slopes = (cost[:, :, None] - cost[:, None, :]) / (size[:, None, :] - size[:, :, None])
    lams = np.unique(np.r_[0.0, slopes[np.isfinite(slopes) & (slopes > 0)]])

    def excess(lam: float) -> float:  # size of the smallest minimiser minus the budget
        reduced = _reduced(cost, size, lam)
        low = reduced.min(1, keepdims=True)
        tied = reduced <= low + 1e-12 * np.abs(low)
        return float(np.where(tied, size, np.inf).min(1).sum() - budget)

    lo, hi = 0, len(lams) - 1
    if excess(lams[0]) > 0:
        while hi - lo > 1:  # invariant: excess(lams[lo]) > 0 >= excess(lams[hi])
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if excess(lams[mid]) > 0 else (lo, mid)
        lo = hi
    lam = float(lams[lo])
    return lam, float(_reduced(cost, size, lam).min(1).sum() - lam * budget)


def _greedy(
    cost: np.ndarray,
    size: np.ndarray,
    budget: float,
    pick: np.ndarray,
    extras: np.ndarray | None = None,
    limits: Sequence[float] = (),
) -> np.ndarray:
    """Improve a feasible ``pick`` by repeatedly taking the change of one group's choice that lowers the cost
    most and fits the size budget (and the ``extras`` budgets, ``limits``)."""
    rows = np.arange(len(cost))
    pick = pick.copy()
    while True:
        room = budget - size[rows, pick].sum()
        gain = cost[rows, pick][:, None] - cost
        misfit = size - size[rows, pick][:, None] > room
        for e, limit in enumerate(limits):
            assert extras is not None
            misfit |= extras[e] - extras[e][rows, pick][:, None] > limit - extras[e][rows, pick].sum()
        gain[(gain <= 0) | misfit | ~np.isfinite(cost)] = -np.inf
        g, j = np.unravel_index(np.argmax(gain), gain.shape)
        if not np.isfinite(gain[g, j]):
            return pick
        pick[g] = j


def _infeasible(budget_bits: float, smallest: float, extra: Sequence[ExtraBudget]) -> ConfigError:
    return ConfigError(
        "target_compression",
        f"no bit allocation fits the budget of {budget_bits / 8 / 2**20:.3f} MB for the quantized "
        f"weights; the smallest reachable is {smallest / 8 / 2**20:.3f} MB "
        "(every module at its fewest bits)"
        + (f" and the extra budgets {[b.name for b in extra]} may not be met" if extra else ""),
    )


def _solve(
    objective: np.ndarray,
    rows: list[np.ndarray],
    upper: list[float],
    cut: tuple[np.ndarray, float] | None,
) -> Any:
    """HiGHS on ``rows @ y <= upper`` (plus ``cut``), binary ``y``, rows scaled to a unit maximum."""
    if cut is not None:
        rows, upper = [*rows, cut[0]], [*upper, cut[1]]
    a = np.vstack(rows)
    norm = np.abs(a).max(1)  # HiGHS warns about (and slows on) badly scaled rows
    norm[norm == 0] = 1.0  # an all-zero row (the cut-off when every cost is equal)
    return milp(
        objective,
        constraints=LinearConstraint(a / norm[:, None], -np.inf, np.array(upper) / norm),
        integrality=np.ones(objective.size),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )


def allocate_bits(
    sensitivity: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int],
    budget_bits: float,
    *,
    ties: Sequence[Sequence[str]] = (),
    extra: Sequence[ExtraBudget] = (),
) -> dict[str, int]:
    """Minimise ``sum sensitivity[m][b]`` subject to ``sum sizes[m] * b <= budget_bits``.

    :param sensitivity: per module, the cost of each candidate bit-width (+inf: never to be taken).
    :param sizes: number of weights of each module.
    :param ties: groups of modules that must take the same bit-width.
    :param extra: further budgets, linear in the one-hot choice of each module.
    :raises ConfigError: if no allocation fits, stating the smallest size reachable.
    """
    modules = list(sensitivity)
    for m in modules:
        if m not in sizes:
            raise ConfigError("sizes", f"no size for module '{m}'")
        if not sensitivity[m]:
            raise ConfigError("sensitivity", f"module '{m}' has no candidate bit-widths")
    groups = _tie_groups(modules, ties)
    candidates = []
    for group in groups:
        bits = sorted(sensitivity[group[0]])
        for other in group[1:]:
            if sorted(sensitivity[other]) != bits:
                raise ConfigError(
                    "ties", f"tied modules '{group[0]}' and '{other}' have different candidates"
                )
        candidates.append(bits)
    width = max(len(bits) for bits in candidates)
    # per group and choice (padded with +inf): summed cost, size in bits and extra costs
    cost = np.full((len(groups), width), np.inf)
    size = np.full((len(groups), width), np.inf)
    extras = np.zeros((len(extra), len(groups), width))
    for g, (group, bits) in enumerate(zip(groups, candidates, strict=True)):
        for j, b in enumerate(bits):
            cost[g, j] = sum(float(sensitivity[m][b]) for m in group)
            size[g, j] = sum(sizes[m] * b for m in group)
            for e, budget in enumerate(extra):
                extras[e, g, j] = sum(float(budget.cost[m][b]) for m in group)
    for m in modules:
        nan = [b for b, c in sensitivity[m].items() if math.isnan(float(c))]
        if nan:
            raise ConfigError("sensitivity", f"module '{m}' has a NaN cost at {nan} bits")
    valid = np.isfinite(cost)  # +inf: a width never to take (and the padding of shorter candidate lists)
    if not valid.any(1).all():
        empty = groups[int(np.flatnonzero(~valid.any(1))[0])]
        which = f"module '{empty[0]}' has" if len(empty) == 1 else f"tied modules {empty} have"
        raise ConfigError("sensitivity", f"{which} no bit-width of finite cost")
    size[~valid] = np.inf
    smallest = float(size.min(1).sum())
    if smallest > budget_bits:
        raise _infeasible(budget_bits, smallest, extra)

    # reduced-cost fixing with a greedy incumbent (used only if it also meets the extra budgets)
    rows = np.arange(len(groups))
    lam, bound = _lagrangian(cost, size, budget_bits)
    reduced = _reduced(cost, size, lam)
    reduced_min = reduced.min(1, keepdims=True)
    tied = reduced <= reduced_min + 1e-12 * np.abs(reduced_min)
    pick = _greedy(cost, size, budget_bits, np.where(tied, size, np.inf).argmin(1))
    incumbent: float | None = float(cost[rows, pick].sum())
    if any(extras[e][rows, pick].sum() > budget.limit for e, budget in enumerate(extra)):
        incumbent = None
    keep = valid.copy()
    if incumbent is not None:
        slack = 1e-9 * max(abs(incumbent), abs(bound)) + 1e-12
        keep &= bound + (reduced - reduced_min) <= incumbent + slack

    # incremental MILP over the groups with more than one choice left
    order = [np.flatnonzero(keep[g])[np.argsort(size[g, keep[g]], kind="stable")] for g in rows]
    base = np.array([o[0] for o in order])
    steps = [(g, o[k - 1], o[k]) for g, o in enumerate(order) for k in range(1, len(o))]
    choice = base.copy()
    if steps:
        n = len(steps)
        g_of = np.array([g for g, _, _ in steps])
        prev, nxt = np.array([p for _, p, _ in steps]), np.array([q for _, _, q in steps])
        d_cost = cost[g_of, nxt] - cost[g_of, prev]
        scale = max(float(np.abs(d_cost).max()), 1e-300)
        constraint_rows = [size[g_of, nxt] - size[g_of, prev]]
        upper = [budget_bits - size[rows, base].sum()]
        for e, budget in enumerate(extra):
            constraint_rows.append(extras[e][g_of, nxt] - extras[e][g_of, prev])
            upper.append(budget.limit - extras[e][rows, base].sum())
        for i in range(1, n):  # a step is taken only after the previous step of its group
            if g_of[i] == g_of[i - 1]:
                row = np.zeros(n)
                row[i], row[i - 1] = 1, -1
                constraint_rows.append(row)
                upper.append(0.0)
        cut = None  # objective cut-off at the incumbent: speeds up branch and bound about 2x at 50 modules
        if incumbent is not None:
            cut = (d_cost / scale, (incumbent - cost[rows, base].sum() + slack) / scale)
        result = _solve(d_cost / scale, constraint_rows, upper, cut)
        if result.x is None and cut is not None:
            # the incumbent lies on the cut-off within HiGHS's tolerances (MQAT's 1e-9 tie-breaks): HiGHS
            # may then call a feasible problem infeasible; the problem without the cut-off is exact
            result = _solve(d_cost / scale, constraint_rows, upper, None)
        if result.x is None:
            if result.status == 2:  # HiGHS: infeasible (only an extra budget can make it so)
                raise _infeasible(budget_bits, smallest, extra)
            raise NNCFExtError(
                f"the bit-allocation MILP failed (HiGHS status {result.status}): {result.message}"
            )
        for taken in np.flatnonzero(result.x > 0.5):  # steps are in order and monotone: the last one wins
            choice[g_of[taken]] = nxt[taken]
    if any(extras[e][rows, choice].sum() > budget.limit for e, budget in enumerate(extra)):
        raise _infeasible(budget_bits, smallest, extra)  # every group was down to one choice
    # HiGHS stops within its tolerances, which differences as small as MQAT's tie-breaks lie below: a
    # change of one group that still lowers the exact cost is taken, and the incumbent wins if it is better
    choice = _greedy(cost, size, budget_bits, choice, extras, [b.limit for b in extra])
    if incumbent is not None and incumbent < float(cost[rows, choice].sum()):
        choice = pick
    return {m: candidates[g][int(choice[g])] for g, group in enumerate(groups) for m in group}
