"""Time of the MQAT / HAWQ-V3 bit-allocation ILP (scipy.optimize.milp, HiGHS) by problem size.

Target (issue 7): 50 modules x 7 bit-widths in under 0.1 s. Also reports the optimality gap of a greedy
allocation (lower the bits of the module whose cost per saved bit is smallest) for comparison.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import measure, report
from nncf_ext.mqat import allocate_bits

BITS = [2, 3, 4, 5, 6, 7, 8]


def problem(modules: int, seed: int) -> tuple[dict[str, dict[int, float]], dict[str, int], float]:
    rng = np.random.default_rng(seed)
    sensitivity = {}
    for i in range(modules):
        scale = rng.lognormal(0, 1.5)
        sensitivity[f"m{i}"] = {b: float(scale * 4.0 ** (-b) * (1 + 0.1 * rng.random())) for b in BITS}
    sizes = {m: int(rng.integers(10_000, 5_000_000)) for m in sensitivity}
    return sensitivity, sizes, 4.0 * sum(sizes.values())  # 8x smaller than fp32


def greedy(sensitivity: dict[str, dict[int, float]], sizes: dict[str, int], budget: float) -> dict[str, int]:
    bits = {m: max(BITS) for m in sensitivity}
    while sum(sizes[m] * b for m, b in bits.items()) > budget:

        def rate(m: str) -> float:
            lower = max(b for b in BITS if b < bits[m])
            return (sensitivity[m][lower] - sensitivity[m][bits[m]]) / (sizes[m] * (bits[m] - lower))

        candidates = [m for m in bits if bits[m] > min(BITS)]
        m = min(candidates, key=rate)
        bits[m] = max(b for b in BITS if b < bits[m])
    return bits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20, help="timed solves per size")
    args = parser.parse_args()
    rows, cases = [], []
    for modules in (10, 50, 200):
        sensitivity, sizes, budget = problem(modules, seed=modules)
        timing = measure(
            lambda s=sensitivity, z=sizes, b=budget: allocate_bits(s, z, b), repeats=args.repeats
        )
        optimum = allocate_bits(sensitivity, sizes, budget)
        cost = sum(sensitivity[m][b] for m, b in optimum.items())
        approx = greedy(sensitivity, sizes, budget)
        greedy_cost = sum(sensitivity[m][b] for m, b in approx.items())
        cases.append(
            {
                "modules": modules,
                "bit_choices": len(BITS),
                **timing,
                "ilp_cost": cost,
                "greedy_cost": greedy_cost,
            }
        )
        rows.append([modules, len(BITS), f"{timing['median_s'] * 1000:.1f}", f"{greedy_cost / cost:.3f}"])
    report("ilp_speed", ["modules", "bit choices", "median ms", "greedy cost / ILP cost"], rows,
           {"cases": cases, "target_ms_50x7": 100})  # fmt: skip


if __name__ == "__main__":
    main()
