"""Time of the MQAT / HAWQ-V3 bit-allocation ILP by problem size, side by side with the plain one-hot
formulation handed straight to ``scipy.optimize.milp`` (HiGHS).

Target (issue 7): 50 modules x 7 bit-widths in under 0.1 s. Each size is solved on several random
instances (sensitivities falling as 4^-bits with lognormal scales over decades, sizes 10 k to 5 M weights,
budget 8x smaller than fp32); the table gives the median over instances of each instance's median time,
and the slowest instance. Both solvers must reach the same cost (checked). Also reports the optimality gap
of a greedy allocation (lower the bits of the module whose cost per saved bit is smallest).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from benchmarks.common import measure, report
from nncf_ext.mqat import allocate_bits

BITS = [2, 3, 4, 5, 6, 7, 8]
Problem = tuple[dict[str, dict[int, float]], dict[str, int], float]


def problem(modules: int, seed: int) -> Problem:
    rng = np.random.default_rng(seed)
    sensitivity = {}
    for i in range(modules):
        scale = rng.lognormal(0, 1.5)
        sensitivity[f"m{i}"] = {b: float(scale * 4.0 ** (-b) * (1 + 0.1 * rng.random())) for b in BITS}
    sizes = {m: int(rng.integers(10_000, 5_000_000)) for m in sensitivity}
    return sensitivity, sizes, 4.0 * sum(sizes.values())  # 8x smaller than fp32


def plain_milp(
    sensitivity: dict[str, dict[int, float]], sizes: dict[str, int], budget: float
) -> dict[str, int]:
    """One binary per (module, bits), one-hot rows and the size row, as HAWQ-V3 writes it."""
    modules = list(sensitivity)
    cost = np.array([[sensitivity[m][b] for b in BITS] for m in modules]).ravel()
    one_hot = np.kron(np.eye(len(modules)), np.ones(len(BITS)))
    size_row = np.array([[sizes[m] * b for b in BITS] for m in modules], dtype=float).ravel()
    result = milp(
        cost,
        constraints=LinearConstraint(
            np.vstack([one_hot, size_row]),
            np.r_[np.ones(len(modules)), -np.inf],
            np.r_[np.ones(len(modules)), budget],
        ),
        integrality=np.ones(cost.size),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0},
    )
    x = result.x.reshape(len(modules), len(BITS))
    return {m: BITS[int(np.argmax(x[i]))] for i, m in enumerate(modules)}


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
    parser.add_argument("--repeats", type=int, default=10, help="timed solves per instance")
    parser.add_argument("--instances", type=int, default=5, help="random instances per size")
    args = parser.parse_args()
    rows, cases = [], []
    for modules in (10, 50, 200):
        ours, plain, gaps, greedy_ratio = [], [], [], []
        for seed in range(args.instances):
            s, z, b = problem(modules, seed=modules + 1000 * seed)
            ours.append(
                measure(lambda s=s, z=z, b=b: allocate_bits(s, z, b), repeats=args.repeats)["median_s"]
            )
            plain.append(measure(lambda s=s, z=z, b=b: plain_milp(s, z, b), repeats=args.repeats)["median_s"])
            cost = sum(s[m][bits] for m, bits in allocate_bits(s, z, b).items())
            reference = sum(s[m][bits] for m, bits in plain_milp(s, z, b).items())
            gaps.append(cost / reference - 1)
            greedy_ratio.append(sum(s[m][bits] for m, bits in greedy(s, z, b).items()) / cost)
        case = {
            "modules": modules,
            "bit_choices": len(BITS),
            "instances": args.instances,
            "ours_median_s": statistics.median(ours),
            "ours_max_s": max(ours),
            "plain_milp_median_s": statistics.median(plain),
            "plain_milp_max_s": max(plain),
            "cost_vs_plain_max_rel": max(gaps),
            "greedy_cost_over_optimum_max": max(greedy_ratio),
        }
        cases.append(case)
        ms = [
            f"{case[k] * 1e3:.1f}"
            for k in ("ours_median_s", "ours_max_s", "plain_milp_median_s", "plain_milp_max_s")
        ]
        rows.append([modules, len(BITS), *ms, f"{max(gaps):+.1e}", f"{max(greedy_ratio):.3f}"])
    header = ["modules", "bit choices", "ours median ms", "ours slowest ms", "plain milp median ms",
              "plain milp slowest ms", "cost vs plain", "greedy / optimum (worst)"]  # fmt: skip
    report("ilp_speed", header, rows, {"cases": cases, "target_ms_50x7": 100})


if __name__ == "__main__":
    main()
