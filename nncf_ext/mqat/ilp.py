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
import numbers
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


def _number(value: object, *, nan: bool = False) -> bool:
    """Whether ``value`` is a real number (not a boolean, a string or None) other than -inf (and NaN unless
    ``nan``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return False
    return (nan or not math.isnan(value)) and value != -math.inf


def _check_inputs(
    sensitivity: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int],
    budget_bits: float,
    ties: Sequence[Sequence[str]],
    extra: Sequence[ExtraBudget],
) -> None:
    """Refuse what the solver would turn into a raw error or, worse, a silently wrong allocation."""
    if not sensitivity:
        raise ConfigError("sensitivity", "no modules to allocate bit-widths to")
    for m, per in sensitivity.items():
        if m not in sizes:
            raise ConfigError("sizes", f"no size for module '{m}'")
        if not _number(sizes[m]) or not 0 <= sizes[m] < math.inf:
            raise ConfigError("sizes", f"module '{m}': expected a number of weights >= 0, got {sizes[m]!r}")
        if not per:
            raise ConfigError("sensitivity", f"module '{m}' has no candidate bit-widths")
        nan = [b for b, c in per.items() if _number(c, nan=True) and math.isnan(c)]
        if nan:
            raise ConfigError("sensitivity", f"module '{m}' has a NaN cost at {nan} bits")
        for b, c in per.items():
            if not isinstance(b, numbers.Integral) or isinstance(b, bool) or b < 1:
                raise ConfigError(
                    "sensitivity", f"module '{m}': a bit-width must be an integer >= 1, not {b!r}"
                )
            if not _number(c):
                raise ConfigError(
                    "sensitivity",
                    f"module '{m}' costs {c!r} at {b} bits: expected a number (+inf: never take)",
                )
    if not _number(budget_bits):
        raise ConfigError(
            "budget_bits", f"expected a number of bits (+inf: no size budget), got {budget_bits!r}"
        )
    if not all(
        isinstance(group, Sequence) and not isinstance(group, str) and all(isinstance(m, str) for m in group)
        for group in ties
    ):
        raise ConfigError("ties", f"expected a list of lists of module names, got {ties!r}")
    for e, budget in enumerate(extra):
        if not isinstance(budget, ExtraBudget):
            raise ConfigError(f"extra[{e}]", f"expected an ExtraBudget, got {type(budget).__name__}")
        where = f"extra[{e}] ({budget.name})"
        if not _number(budget.limit):
            raise ConfigError(where, f"the limit must be a number (+inf: no limit), got {budget.limit!r}")
        if not isinstance(budget.cost, Mapping):
            raise ConfigError(
                where, f"expected costs {{module: {{bits: cost}}}}, got {type(budget.cost).__name__}"
            )
        for m, per in sensitivity.items():
            costs = budget.cost.get(m)
            if not isinstance(costs, Mapping):
                raise ConfigError(where, f"no costs for module '{m}'")
            for b in per:
                if b not in costs:
                    raise ConfigError(where, f"module '{m}' has no cost at {b} bits")
                if not _number(costs[b]):
                    raise ConfigError(
                        where,
                        f"module '{m}' costs {costs[b]!r} at {b} bits: expected a number (+inf: not allowed)",
                    )


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


def _over(terms: np.ndarray, limit: float) -> bool:
    """The sum of ``terms`` above ``limit`` by more than the rounding of summing them in another order."""
    return bool(terms.sum() > limit + 1e-12 * max(abs(limit), float(np.abs(terms).sum())))


def _size_text(bits: float) -> str:
    """``bits`` in MB, KB or bytes, whichever keeps the three decimals meaningful."""
    nbytes = bits / 8
    for unit, scale in (("MB", 2**20), ("KB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.3f} {unit}"
    return f"{nbytes:.15g} bytes"


def _check_reachable(groups: list[list[str]], valid: np.ndarray, path: str, problem: str) -> None:
    """Refuse a group of modules with no ``valid`` choice."""
    if not valid.any(1).all():
        empty = groups[int(np.flatnonzero(~valid.any(1))[0])]
        which = f"module '{empty[0]}' has" if len(empty) == 1 else f"tied modules {empty} have"
        raise ConfigError(path, f"{which} {problem}")


def _extra_unmet(e: int, budget: ExtraBudget, least: float) -> ConfigError:
    """Extra budget ``e`` is below ``least``, its sum with every module at its cheapest width for it."""
    limit, low = f"{budget.limit:g}", f"{least:g}"
    if limit == low:  # apart by less than the printed precision
        limit, low = f"{budget.limit:.17g}", f"{least:.17g}"
    return ConfigError(
        f"extra[{e}] ({budget.name})", f"no bit allocation meets the limit {limit}: its least is {low}"
    )


def _infeasible(budget_bits: float, smallest: float, extra: Sequence[ExtraBudget]) -> ConfigError:
    names = [b.name for b in extra]
    if budget_bits == math.inf:
        return ConfigError("target_compression", f"no bit allocation meets the extra budgets {names}")
    budget, low = _size_text(budget_bits), _size_text(smallest)
    if budget == low:  # apart by less than the printed precision
        budget, low = f"{budget} ({budget_bits:.15g} bits)", f"{low} ({smallest:.15g} bits)"
    return ConfigError(
        "target_compression",
        f"no bit allocation fits the {'negative ' if budget_bits < 0 else ''}budget of {budget} for the "
        f"quantized weights; the smallest reachable is {low} (every module at its fewest bits that the "
        "sensitivities and extra budgets allow)"
        + (f" and the extra budgets {names} may not be met" if extra else ""),
    )


def _solve(
    objective: np.ndarray,
    rows: list[np.ndarray],
    upper: list[float],
    cut: tuple[np.ndarray, float] | None,
) -> Any:
    """HiGHS on ``rows @ y <= upper`` (plus ``cut``), binary ``y``, each row scaled to a smallest coefficient
    of 1: HiGHS's feasibility tolerance is absolute, and a row scaled to a unit maximum (or median) shrank
    the slack of a budget mixing costs of 1 and 1e6 below it, so HiGHS took an allocation over the budget."""
    if cut is not None:
        rows, upper = [*rows, cut[0]], [*upper, cut[1]]
    a = np.vstack(rows)
    magnitude = np.abs(a)
    norm = np.array([m[m > 0].min() if (m > 0).any() else 1.0 for m in magnitude])
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
    :param budget_bits: the size budget in bits (+inf: none, each module takes its cheapest width).
    :param ties: groups of modules that must take the same bit-width.
    :param extra: further budgets, linear in the one-hot choice of each module; an extra cost of +inf rules
        that width of that module out.
    :raises ConfigError: on a malformed input (NaN or -inf costs, negative sizes, ...), naming it; or if no
        allocation fits, stating the smallest size reachable.
    """
    _check_inputs(sensitivity, sizes, budget_bits, ties, extra)
    modules = list(sensitivity)
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
            size[g, j] = sum(float(sizes[m]) * b for m in group)
            for e, budget in enumerate(extra):
                extras[e, g, j] = sum(float(budget.cost[m][b]) for m in group)
    valid = np.isfinite(cost)  # +inf: a width never to take (and the padding of shorter candidate lists)
    _check_reachable(groups, valid, "sensitivity", "no bit-width of finite cost")
    valid &= np.isfinite(extras).all(0)  # +inf in an extra budget: a width not allowed
    _check_reachable(
        groups, valid, "extra", "no bit-width of finite sensitivity that every extra budget allows"
    )
    smallest = float(np.where(valid, size, np.inf).min(1).sum())
    if smallest > budget_bits:
        raise _infeasible(budget_bits, smallest, extra)
    # a width over an extra budget even with every other group at its least is in no feasible allocation:
    # dropping it is exact, and keeps a huge cost ("never", 1e9) out of the solver's scaled rows, where it
    # made HiGHS call a feasible problem infeasible
    for e, budget in enumerate(extra):
        least = np.where(valid, extras[e], np.inf).min(1)
        slack = 1e-9 * (abs(budget.limit) + np.abs(np.where(valid, extras[e], 0.0)).max(1).sum())
        valid &= extras[e] - least[:, None] <= budget.limit - least.sum() + slack
        if not valid.any(1).all():
            raise _extra_unmet(e, budget, float(least.sum()))
    smallest = float(np.where(valid, size, np.inf).min(1).sum())  # the widths left may be larger
    if smallest > budget_bits:
        raise _infeasible(budget_bits, smallest, extra)
    cost[~valid] = np.inf  # a width an extra budget rules out is never taken either
    size[~valid] = np.inf
    extras[:, ~valid] = 0.0
    # no budget above the largest reachable size binds: +inf (no budget) becomes a finite one
    size_budget = min(budget_bits, float(np.where(valid, size, -np.inf).max(1).sum()))

    # reduced-cost fixing with a greedy incumbent (used only if it also meets the extra budgets)
    rows = np.arange(len(groups))
    lam, bound = _lagrangian(cost, size, size_budget)
    reduced = _reduced(cost, size, lam)
    reduced_min = reduced.min(1, keepdims=True)
    tied = reduced <= reduced_min + 1e-12 * np.abs(reduced_min)
    pick = _greedy(cost, size, size_budget, np.where(tied, size, np.inf).argmin(1))
    incumbent: float | None = float(cost[rows, pick].sum())
    if _over(size[rows, pick], size_budget) or any(
        _over(extras[e][rows, pick], budget.limit) for e, budget in enumerate(extra)
    ):
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
        upper = [size_budget - size[rows, base].sum()]
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
        limits = [size_budget, *(b.limit for b in extra)]
        for _ in range(3):  # an answer over a budget within HiGHS's tolerances is solved again, tightened
            result = _solve(d_cost / scale, constraint_rows, upper, cut)
            if result.x is None and cut is not None:
                # the incumbent lies on the cut-off within HiGHS's tolerances (MQAT's 1e-9 tie-breaks):
                # HiGHS may then call a feasible problem infeasible; the problem without the cut-off is exact
                result = _solve(d_cost / scale, constraint_rows, upper, None)
            if result.x is None:
                if result.status == 2:  # HiGHS: infeasible (only an extra budget can make it so)
                    raise _infeasible(budget_bits, smallest, extra)
                raise NNCFExtError(
                    f"the bit-allocation MILP failed (HiGHS status {result.status}): {result.message}"
                )
            choice = base.copy()
            for taken in np.flatnonzero(result.x > 0.5):  # steps are in order and monotone: the last wins
                choice[g_of[taken]] = nxt[taken]
            sums = [size[rows, choice], *(extras[e][rows, choice] for e in range(len(extra)))]
            excess = [
                (i, float(t.sum()) - limit) for i, (t, limit) in enumerate(zip(sums, limits, strict=True))
            ]
            over_by = [(i, x) for i, x in excess if _over(sums[i], limits[i])]
            if not over_by:
                break
            for i, x in over_by:
                upper[i] -= x + 1e-9 * max(abs(limits[i]), 1e-300)
    over = [b.name for e, b in enumerate(extra) if _over(extras[e][rows, choice], b.limit)]
    if over and not steps:
        raise _infeasible(budget_bits, smallest, extra)  # every group was down to one choice
    if over or _over(size[rows, choice], size_budget):  # over within HiGHS's tolerances: never returned
        if incumbent is None:  # no allocation known to fit exactly
            raise NNCFExtError(
                "the bit-allocation MILP returned an allocation over the "
                + (f"extra budgets {over}" if over else "size budget")
                + " (within HiGHS's tolerances)"
            )
        choice = pick  # the greedy incumbent fits exactly
    # HiGHS stops within its tolerances, which differences as small as MQAT's tie-breaks lie below: a
    # change of one group that still lowers the exact cost is taken, and the incumbent wins if it is better
    choice = _greedy(cost, size, size_budget, choice, extras, [b.limit for b in extra])
    if incumbent is not None and incumbent < float(cost[rows, choice].sum()):
        choice = pick
    return {m: candidates[g][int(choice[g])] for g, group in enumerate(groups) for m in group}
