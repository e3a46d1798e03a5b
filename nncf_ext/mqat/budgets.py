"""Budgets of the MQAT bit allocation beside the model size: BOPs, and tables of measured costs.

* **BOPs** (bit operations, as HAWQ-V3 counts them): ``MACs x weight bits x activation bits`` summed over the
  operations of the modules' weights, at the example input of the NNCF graph. ``"bops_compression": r``
  allows at most the FP32 BOPs (32 x 32 bits per MAC) / ``r``.
* **Measured costs** (``"budgets": [{"table": "latency.json", "limit": 4.0}]``): a JSON table
  ``{"costs": {module: {bits: cost}}}`` measured by the user, for example each module's
  latency on the target device at each width (``Infinity``: never that width, e.g. no kernel for it). The
  allocation keeps the summed cost within ``limit``.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nncf_ext.config_reader import ConfigReader
from nncf_ext.errors import ConfigError
from nncf_ext.mqat.ilp import ExtraBudget
from nncf_ext.scopes import WeightInfo


@dataclass(frozen=True)
class TableBudget:
    """A budget over a table of measured costs (``"budgets"`` of the allocation)."""

    table: str
    limit: float

    @classmethod
    def from_config(cls, r: ConfigReader) -> TableBudget:
        budget = cls(table=r.string("table"), limit=r.number("limit", minimum=0.0))
        r.finish()
        return budget


def module_macs(modules: Mapping[str, Sequence[WeightInfo]], path: str) -> dict[str, int]:
    """Each module's multiply-accumulates: the sum over the weighted operations of its weights."""
    macs = {}
    for module, weights in modules.items():
        total = 0
        for w in weights:
            if not w.weighted:  # a parameter used elementwise (NetVLAD's centroids): no multiply-accumulates
                continue
            if len(w.op_macs) != len(w.op_names):
                raise ConfigError(path, f"weight '{w.name}' was found without its operations' MACs")
            for op, kind, count in zip(w.op_names, w.op_types, w.op_macs, strict=True):
                if count is None:
                    raise ConfigError(
                        path,
                        f"cannot count the MACs of '{op}' ({kind}), an operation of weight '{w.name}' in "
                        f"module '{module}': BOPs are counted for convolutions, linear layers, matmuls "
                        "and embeddings whose output the model uses",
                    )
                total += count
        macs[module] = total
    return macs


def bops_budget(
    modules: Mapping[str, Sequence[WeightInfo]],
    candidate_bits: Sequence[int],
    activation_bits: int | str | None,
    compression: float,
    path: str,
) -> tuple[ExtraBudget, int]:
    """The BOPs budget of ``compression`` over the modules' operations, and their FP32 BOPs.

    :param activation_bits: the activations' width (an int), ``"module"`` (the module's own) or None
        (activations stay in floating point: 32 bits).
    :raises ConfigError: at ``path`` when even every module at its fewest bits exceeds the budget, stating
        the highest BOPs compression reachable.
    """
    macs = module_macs(modules, path)
    fp32 = 32 * 32 * sum(macs.values())
    if fp32 == 0:
        raise ConfigError(path, "the modules' operations have no multiply-accumulates to budget")

    def act(bits: int) -> int:
        if activation_bits is None:
            return 32
        return bits if activation_bits == "module" else int(activation_bits)

    cost = {m: {b: float(macs[m] * b * act(b)) for b in candidate_bits} for m in modules}
    least = sum(min(per.values()) for per in cost.values())
    limit = fp32 / compression
    if least > limit:
        raise ConfigError(
            path,
            f"no bit allocation reaches {compression:g}x fewer BOPs than FP32: the most reachable is "
            f"{fp32 / least:.3g}x (every module at {min(candidate_bits)} bits"
            + ("" if activation_bits == "module" else f", activations at {act(min(candidate_bits))} bits")
            + ")",
        )
    return ExtraBudget("bops_compression", cost, limit), fp32


def table_budget(
    budget: TableBudget, modules: Sequence[str], candidate_bits: Sequence[int], name: str, path: str
) -> ExtraBudget:
    """The budget of a table of measured costs, checked to cover every module at every candidate width."""
    try:
        raw = json.loads(Path(budget.table).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}.table", f"cannot read {budget.table}: {e}") from None
    costs_raw = raw.get("costs") if isinstance(raw, dict) else None
    if not isinstance(costs_raw, dict):
        raise ConfigError(
            f"{path}.table", f'{budget.table}: expected {{"costs": {{module: {{bits: cost}}}}}}'
        )
    unknown = sorted(set(costs_raw) - set(modules))
    if unknown:
        raise ConfigError(
            f"{path}.table", f"{budget.table}: unknown modules {unknown}; modules are {list(modules)}"
        )
    cost: dict[str, dict[int, float]] = {}
    for m in modules:
        per = costs_raw.get(m)
        if not isinstance(per, dict):
            raise ConfigError(f"{path}.table", f"{budget.table}: no costs for module '{m}'")
        cost[m] = {}
        for b in candidate_bits:
            value = per.get(str(b))
            number = math.nan
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                with contextlib.suppress(OverflowError):  # an integer beyond float: not a cost
                    number = float(value)
            if math.isnan(number) or number < 0:
                raise ConfigError(
                    f"{path}.table",
                    f"{budget.table}: module '{m}' at {b} bits costs {value!r}: expected a number >= 0 "
                    "(Infinity: never that width)",
                )
            cost[m][b] = number
        if not any(math.isfinite(c) for c in cost[m].values()):
            raise ConfigError(f"{path}.table", f"{budget.table}: module '{m}' costs Infinity at every width")
    return ExtraBudget(name, cost, budget.limit)
