"""Bit allocation by integer linear programming (HAWQ-V3, MQAT): one bit-width per module, the least
summed sensitivity, under a size budget (and optional extra budgets such as BOPs or measured latency).

Solved with ``scipy.optimize.milp`` (HiGHS); binary ``x[m, b] = 1`` when module ``m`` takes ``b`` bits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from nncf_ext.errors import ConfigError


@dataclass(frozen=True)
class ExtraBudget:
    """Another linear budget: ``sum cost[m][b] * x[m, b] <= limit`` (e.g. BOPs or latency in ms)."""

    name: str
    cost: Mapping[str, Mapping[int, float]]
    limit: float


def allocate_bits(
    sensitivity: Mapping[str, Mapping[int, float]],
    sizes: Mapping[str, int],
    budget_bits: float,
    *,
    ties: Sequence[Sequence[str]] = (),
    extra: Sequence[ExtraBudget] = (),
) -> dict[str, int]:
    """Minimise ``sum sensitivity[m][b]`` subject to ``sum sizes[m] * b <= budget_bits``.

    :param sensitivity: per module, the cost of each candidate bit-width.
    :param sizes: number of weights of each module.
    :param ties: groups of modules that must take the same bit-width.
    :raises ConfigError: if no allocation fits, stating the smallest size reachable.
    """
    modules = list(sensitivity)
    for m in modules:
        if m not in sizes:
            raise ConfigError("sizes", f"no size for module '{m}'")
    choices = [(m, b) for m in modules for b in sorted(sensitivity[m])]
    col = {key: i for i, key in enumerate(choices)}
    n = len(choices)
    rows: list[np.ndarray] = []
    bounds: list[tuple[float, float]] = []

    def constrain(row: np.ndarray, low: float, high: float) -> None:
        rows.append(row)
        bounds.append((low, high))

    for m in modules:  # exactly one bit-width per module
        row = np.zeros(n)
        row[[col[(m, b)] for b in sensitivity[m]]] = 1
        constrain(row, 1, 1)
    constrain(np.array([sizes[m] * b for m, b in choices], dtype=float), -np.inf, budget_bits)
    for group in ties:
        for other in group[1:]:
            for b in sensitivity[group[0]]:
                if (other, b) not in col:
                    raise ConfigError(
                        "ties", f"tied modules '{group[0]}' and '{other}' have different candidates"
                    )
                row = np.zeros(n)
                row[col[(group[0], b)]], row[col[(other, b)]] = 1, -1
                constrain(row, 0, 0)
    for budget in extra:
        constrain(np.array([budget.cost[m][b] for m, b in choices], dtype=float), -np.inf, budget.limit)
    cost = np.array([sensitivity[m][b] for m, b in choices], dtype=float)
    result = milp(
        cost,
        constraints=LinearConstraint(np.vstack(rows), *np.array(bounds, dtype=float).T),
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
    )
    if result.status != 0 or result.x is None:
        smallest = sum(sizes[m] * min(sensitivity[m]) for m in modules)
        raise ConfigError(
            "target_compression",
            f"no bit allocation fits the budget of {budget_bits / 8 / 2**20:.3f} MB for the quantized "
            f"weights; the smallest reachable is {smallest / 8 / 2**20:.3f} MB "
            "(every module at its fewest bits)"
            + (f" and the extra budgets {[b.name for b in extra]} may not be met" if extra else ""),
        )
    chosen = {m: b for (m, b), x in zip(choices, result.x, strict=True) if x > 0.5}
    return chosen
