import itertools

import numpy as np
import pytest

from nncf_ext.errors import ConfigError
from nncf_ext.mqat import ExtraBudget, allocate_bits

BITS = [2, 3, 4, 6, 8]


def brute_force(sens, sizes, budget, ties=(), extra=()):  # type: ignore[no-untyped-def]
    modules = list(sens)
    best, best_cost = None, float("inf")
    for combo in itertools.product(BITS, repeat=len(modules)):
        choice = dict(zip(modules, combo, strict=True))
        if sum(sizes[m] * b for m, b in choice.items()) > budget:
            continue
        if any(len({choice[m] for m in group}) > 1 for group in ties):
            continue
        if any(sum(e.cost[m][choice[m]] for m in modules) > e.limit for e in extra):
            continue
        cost = sum(sens[m][choice[m]] for m in modules)
        if cost < best_cost:
            best, best_cost = choice, cost
    return best, best_cost


@pytest.mark.parametrize("seed", range(25))
def test_ilp_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    modules = [f"m{i}" for i in range(int(rng.integers(2, 5)))]
    sens = {m: {b: float(rng.random() * (9 - b) ** 2) for b in BITS} for m in modules}
    sizes = {m: int(rng.integers(10, 1000)) for m in modules}
    budget = sum(sizes.values()) * float(rng.uniform(2.5, 7))
    ties = [modules[:2]] if seed % 3 == 0 else []
    bops = ExtraBudget(
        "bops", {m: {b: sizes[m] * b * b for b in BITS} for m in modules}, sum(sizes.values()) * 30
    )
    extra = [bops] if seed % 4 == 0 else []
    expected, expected_cost = brute_force(sens, sizes, budget, ties, extra)
    if expected is None:
        with pytest.raises(ConfigError):
            allocate_bits(sens, sizes, budget, ties=ties, extra=extra)
        return
    got = allocate_bits(sens, sizes, budget, ties=ties, extra=extra)
    assert sum(sens[m][got[m]] for m in modules) == pytest.approx(expected_cost)
    assert sum(sizes[m] * got[m] for m in modules) <= budget
    for group in ties:
        assert len({got[m] for m in group}) == 1
    for e in extra:
        assert sum(e.cost[m][got[m]] for m in modules) <= e.limit


@pytest.mark.parametrize("seed", [1610, 2003, 2021])
def test_near_tied_costs_from_allocation_costs_are_never_called_infeasible(seed: int) -> None:
    # MQAT's costs carry ~1e-9 tie-breaks; a solver cut-off at the greedy cost once made HiGHS call these
    # feasible instances infeasible (seed 1610: 3 modules, all-2-bit well under the budget)
    from nncf_ext.mqat.algo import allocation_costs

    rng = np.random.default_rng(seed)
    modules = [f"m{i}" for i in range(int(rng.integers(3, 12)))]
    bits = [2, 3, 4, 5, 6, 8]
    sens = {m: allocation_costs({b: float(rng.normal(0.01, 0.02)) for b in bits}) for m in modules}
    sizes = {m: int(10 ** rng.uniform(3, 7)) for m in modules}
    budget = sum(sizes.values()) * rng.uniform(2.2, 7.5)
    got = allocate_bits(sens, sizes, budget)
    assert sum(sizes[m] * got[m] for m in modules) <= budget
    if len(modules) <= 5:
        best = min(
            sum(sens[m][b] for m, b in zip(modules, combo, strict=True))
            for combo in itertools.product(bits, repeat=len(modules))
            if sum(sizes[m] * b for m, b in zip(modules, combo, strict=True)) <= budget
        )
        assert sum(sens[m][got[m]] for m in modules) == pytest.approx(best, rel=1e-6)


def test_tie_breaks_below_the_solver_tolerance_still_spend_the_budget() -> None:
    # seed 36: m2's measured costs are all noise, so its costs differ only by the 1e-9 tie-breaks; HiGHS
    # stopped at m2: 3 bits, within its tolerances, leaving budget for 4 bits unused
    from nncf_ext.mqat.algo import allocation_costs

    bits = [2, 3, 4, 5, 6, 8]
    rng = np.random.default_rng(36)
    modules = [f"m{i}" for i in range(int(rng.integers(2, 5)))]
    sens = {m: allocation_costs({b: float(rng.normal(0.01, 0.02)) for b in bits}) for m in modules}
    sizes = {m: int(10 ** rng.uniform(2, 6)) for m in modules}
    budget = sum(sizes.values()) * rng.uniform(2.2, 7.5)
    combos = (dict(zip(modules, c, strict=True)) for c in itertools.product(bits, repeat=len(modules)))
    feasible = [c for c in combos if sum(sizes[m] * b for m, b in c.items()) <= budget]
    best = min(feasible, key=lambda c: sum(sens[m][b] for m, b in c.items()))
    assert allocate_bits(sens, sizes, budget) == best == {"m0": 3, "m1": 2, "m2": 4}


def test_modules_with_different_candidates() -> None:
    # padded choices are +inf; 0 * inf at a zero Lagrange multiplier made every choice of a module NaN
    assert allocate_bits({"a": {2: 0.0, 4: 0.0}, "b": {8: 0.0}}, {"a": 10, "b": 10}, 200)["b"] == 8
    sens = {"a": {2: 1.0, 4: 0.5}, "b": {3: 2.0, 5: 1.0, 8: 0.0}, "c": {8: 0.0}}
    sizes = {"a": 100, "b": 100, "c": 10}
    assert allocate_bits(sens, sizes, 100 * 4 + 100 * 5 + 80) == {"a": 4, "b": 5, "c": 8}
    assert allocate_bits(sens, sizes, 100 * 2 + 100 * 8 + 80) == {"a": 2, "b": 8, "c": 8}


def test_infeasible_budget_states_the_smallest_size() -> None:
    sens = {"a": {2: 1.0, 8: 0.0}, "b": {2: 1.0, 8: 0.0}}
    sizes = {"a": 8 * 2**20, "b": 8 * 2**20}  # 2 modules x 8 Mi weights: at 2 bits, 4 MB
    with pytest.raises(ConfigError, match=r"smallest reachable is 4\.000 MB"):
        allocate_bits(sens, sizes, budget_bits=3 * 8 * 2**20)


def test_lower_sensitivity_gets_fewer_bits() -> None:
    sens = {"robust": {2: 0.1, 4: 0.05, 8: 0.0}, "fragile": {2: 10.0, 4: 1.0, 8: 0.0}}
    sizes = {"robust": 1000, "fragile": 1000}
    assert allocate_bits(sens, sizes, budget_bits=1000 * 10) == {"robust": 2, "fragile": 8}


def knapsack_optimum(sens, sizes, budget: int) -> float:  # type: ignore[no-untyped-def]
    """Exact optimum by dynamic programming over the (integer) budget."""
    best = np.zeros(budget + 1)  # best[c]: least cost of the modules so far within c bits
    for m in sens:
        new = np.full(budget + 1, np.inf)
        for b, cost in sens[m].items():
            need = sizes[m] * b
            if need <= budget:
                new[need:] = np.minimum(new[need:], best[: budget + 1 - need] + cost)
        best = new
    return float(best[budget])


@pytest.mark.parametrize("seed", range(12))
def test_ilp_equals_dynamic_programming_on_40_modules(seed: int) -> None:
    """Large enough that the reduced-cost fixing removes most choices and the MILP still has work to do."""
    rng = np.random.default_rng(100 + seed)
    modules = [f"m{i}" for i in range(40)]
    if seed % 2:  # sensitivity-like: quantization noise falling with bits, scales over decades
        sens = {m: {b: float(rng.lognormal(0, 1.5) * 4.0**-b) for b in BITS} for m in modules}
    else:  # arbitrary, not even monotone in bits
        sens = {m: {b: float(rng.random()) for b in BITS} for m in modules}
    sizes = {m: int(rng.integers(1, 25)) for m in modules}
    budget = int(sum(sizes.values()) * rng.uniform(2.5, 6))
    got = allocate_bits(sens, sizes, budget)
    assert sum(sizes[m] * got[m] for m in modules) <= budget
    assert sum(sens[m][got[m]] for m in modules) == pytest.approx(
        knapsack_optimum(sens, sizes, budget), rel=1e-9
    )


def test_overlapping_ties_join_into_one_group() -> None:
    # alone, a wants 8 bits and c wants 2; tied through b, all three share one width
    sens = {
        "a": {2: 9.0, 8: 0.0},
        "b": {2: 0.1, 8: 0.0},
        "c": {2: 0.0, 8: 0.5},
    }
    sizes = {"a": 10, "b": 10, "c": 10}
    assert allocate_bits(sens, sizes, 240) == {"a": 8, "b": 8, "c": 2}  # untied
    got = allocate_bits(sens, sizes, 240, ties=[["a", "b"], ["c", "b"]])
    assert got == {"a": 8, "b": 8, "c": 8}
    assert allocate_bits(sens, sizes, 239, ties=[["a", "b"], ["c", "b"]]) == {"a": 2, "b": 2, "c": 2}


def test_a_budget_of_exactly_the_smallest_size_is_feasible() -> None:
    sens = {"a": {2: 1.0, 4: 0.5, 8: 0.0}, "b": {3: 1.0, 8: 0.0}}
    sizes = {"a": 100, "b": 50}
    assert allocate_bits(sens, sizes, 100 * 2 + 50 * 3) == {"a": 2, "b": 3}
    with pytest.raises(ConfigError, match="smallest reachable"):
        allocate_bits(sens, sizes, 100 * 2 + 50 * 3 - 1)


@pytest.mark.parametrize("seed", range(40))
def test_budgets_filled_exactly_match_brute_force(seed: int) -> None:
    """Budgets equal to the size of some allocation, with the tie-breaks MQAT adds to its costs."""
    from nncf_ext.mqat.algo import allocation_costs

    rng = np.random.default_rng(seed + 100)
    modules = [f"m{i}" for i in range(int(rng.integers(2, 5)))]
    sizes = {m: int(rng.integers(1, 6)) * 10 for m in modules}
    raw = {m: {b: float(rng.integers(0, 3)) for b in BITS} for m in modules}  # many exact ties
    sens = {m: allocation_costs(raw[m]) for m in modules}
    budget = sum(sizes[m] * int(rng.choice(BITS)) for m in modules)
    _, expected_cost = brute_force(sens, sizes, budget)
    got = allocate_bits(sens, sizes, budget)
    assert sum(sizes[m] * got[m] for m in modules) <= budget
    assert sum(sens[m][got[m]] for m in modules) == pytest.approx(expected_cost, abs=1e-12)


S2 = {"a": {4: 1.0, 8: 0.0}, "b": {4: 1.0, 8: 0.0}}
Z2 = {"a": 1, "b": 1}


def extra_costs(**override: dict[int, float]) -> dict[str, dict[int, float]]:
    return {"a": {4: 1.0, 8: 1.0}, "b": {4: 1.0, 8: 1.0}, **override}


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (({}, {}, 100), {}, "sensitivity: no modules"),
        ((S2, Z2, float("nan")), {}, "budget_bits: expected a number"),
        ((S2, Z2, None), {}, "budget_bits: expected a number"),
        ((S2, Z2, float("-inf")), {}, "budget_bits: expected a number"),
        ((S2, {"a": float("nan"), "b": 1}, 100), {}, "sizes: module 'a'.* got nan"),
        ((S2, {"a": float("inf"), "b": 1}, 100), {}, "sizes: module 'a'.* got inf"),
        ((S2, {"a": -1, "b": 1}, 100), {}, "sizes: module 'a'.* got -1"),
        ((S2, {"a": "1", "b": 1}, 100), {}, "sizes: module 'a'"),
        (({"a": {4: "x", 8: 0.0}}, {"a": 1}, 100), {}, "module 'a' costs 'x' at 4 bits"),
        (({"a": {4: None, 8: 0.0}}, {"a": 1}, 100), {}, "module 'a' costs None at 4 bits"),
        (({"a": {4: float("-inf"), 8: 0.0}}, {"a": 1}, 100), {}, "module 'a' costs -inf at 4 bits"),
        (({"a": {0: 0.0, 8: 1.0}}, {"a": 1}, 100), {}, "a bit-width must be an integer >= 1, not 0"),
        ((S2, Z2, 100), {"ties": ["ab"]}, "ties: expected a list of lists"),
        ((S2, Z2, 100), {"ties": "ab"}, "ties: expected a list of lists"),
        (
            (S2, Z2, 100),
            {"extra": [ExtraBudget("e", {"a": {4: 1, 8: 1}}, 10)]},
            r"\(e\): no costs for module 'b'",
        ),
        (
            (S2, Z2, 100),
            {"extra": [ExtraBudget("e", extra_costs(a={4: 1}), 10)]},
            "'a' has no cost at 8 bits",
        ),
        ((S2, Z2, 16), {"extra": [ExtraBudget("e", extra_costs(b={4: 1, 8: float("nan")}), 4)]}, "costs nan"),
        (
            (S2, Z2, 16),
            {"extra": [ExtraBudget("e", extra_costs(b={4: 1, 8: float("-inf")}), 4)]},
            "costs -inf",
        ),
        ((S2, Z2, 16), {"extra": [ExtraBudget("e", extra_costs(), float("nan"))]}, "limit must be a number"),
        ((S2, Z2, 16), {"extra": [ExtraBudget("e", extra_costs(), float("-inf"))]}, "limit must be a number"),
        ((S2, Z2, 16), {"extra": [{"a": {4: 1}}]}, r"extra\[0\]: expected an ExtraBudget"),
    ],
)
def test_malformed_inputs_are_refused_naming_them(args: tuple, kwargs: dict, match: str) -> None:
    """Raw ValueError / IndexError / KeyError before; a NaN extra cost or a -inf cost was silently taken as
    fitting (a=8, b=8 over a limit of 4) or as "never"; a string of ties tied module names letter by letter."""
    with pytest.raises(ConfigError, match=match):
        allocate_bits(*args, **kwargs)


def test_an_infinite_budget_means_no_size_budget() -> None:
    """Each module then takes its cheapest width (an IndexError before); extra budgets still bind."""
    sens = {"a": {2: 1.0, 4: 0.0, 8: 0.5}, "b": {2: 0.0, 8: 1.0}}
    assert allocate_bits(sens, {"a": 10, "b": 10}, float("inf")) == {"a": 4, "b": 2}
    bops = ExtraBudget("bops", {"a": {2: 1, 4: 9, 8: 1}, "b": {2: 1, 8: 1}}, 5)
    assert allocate_bits(sens, {"a": 10, "b": 10}, float("inf"), extra=[bops]) == {"a": 8, "b": 2}
    with pytest.raises(
        ConfigError, match=r"extra\[0\] \(bops\): no bit allocation meets the limit 1: its least is 2"
    ):
        allocate_bits(sens, {"a": 10, "b": 10}, float("inf"), extra=[ExtraBudget("bops", bops.cost, 1)])


@pytest.mark.parametrize(("never", "budget"), [(float("inf"), 12), (float("inf"), 16), (1e9, 16)])
def test_an_infinite_extra_cost_rules_only_that_width_out(never: float, budget: int) -> None:
    """+inf (and a huge cost that no allocation can afford) on a width the solver would not take made HiGHS
    call the problem infeasible: ``limit - inf`` in its rows, or a row scaled by 1e9."""
    bops = ExtraBudget("bops", {"a": {4: never, 8: 1.0}, "b": {4: 1.0, 8: 8.0}}, 4)
    assert allocate_bits(S2, Z2, budget, extra=[bops]) == {"a": 8, "b": 4}
    no_b = ExtraBudget("bops", {"a": {4: 1.0, 8: 1.0}, "b": {4: float("inf"), 8: float("inf")}}, 4)
    with pytest.raises(ConfigError, match=r"extra: module 'b' has no bit-width .* every extra budget allows"):
        allocate_bits(S2, Z2, budget, extra=[no_b])


@pytest.mark.parametrize(
    ("sizes", "budget", "match"),
    [
        ({"a": 10, "b": 10}, 10, r"budget of 1\.25 bytes .* smallest reachable is 10 bytes"),
        ({"a": 1000, "b": 1000}, 7000, r"budget of 875 bytes .* smallest reachable is 1000 bytes"),
        ({"a": 2**12, "b": 2**12}, 8 * 2**10 * 3, r"budget of 3\.000 KB .* smallest reachable is 4\.000 KB"),
        (  # apart by less than the printed precision: the exact sizes follow
            {"a": 2**21, "b": 2**21},
            2**24 - 1,
            r"budget of 2\.000 MB \(16777215 bits\) .* reachable is 2\.000 MB \(16777216 bits\)",
        ),
        ({"a": 10, "b": 10}, -5000, r"the negative budget of -625 bytes"),
    ],
)
def test_an_infeasible_budget_is_stated_with_meaningful_precision(
    sizes: dict[str, int], budget: float, match: str
) -> None:
    """Small models read "a budget of 0.000 MB ... smallest reachable is 0.000 MB", a huge target "-0.000 MB"."""
    with pytest.raises(ConfigError, match=match):
        allocate_bits(S2, sizes, budget)


def test_a_solver_answer_over_the_budget_is_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """HiGHS accepts a constraint violated within its tolerances: such an answer is never returned (the greedy
    allocation, which fits exactly, is)."""
    from types import SimpleNamespace

    from nncf_ext.mqat import ilp

    rng = np.random.default_rng(1)  # seed 1: reduced-cost fixing leaves the MILP three steps
    sens = {f"m{i}": {b: float(rng.random()) for b in BITS} for i in range(6)}
    sizes = dict.fromkeys(sens, 10)
    calls = []

    def every_step(objective: np.ndarray, *args: object) -> SimpleNamespace:
        calls.append(1)
        return SimpleNamespace(x=np.ones(objective.size), status=0, message="")

    monkeypatch.setattr(ilp, "_solve", every_step)
    chosen = allocate_bits(sens, sizes, 6 * 10 * 4)
    assert calls and sum(sizes[m] * b for m, b in chosen.items()) <= 6 * 10 * 4


def test_a_solver_answer_over_an_extra_budget_without_a_fitting_incumbent_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from nncf_ext.errors import NNCFExtError
    from nncf_ext.mqat import ilp

    rng = np.random.default_rng(1)
    sens = {f"m{i}": {b: float(rng.random()) for b in BITS} for i in range(6)}
    sizes = dict.fromkeys(sens, 10)
    unbound = allocate_bits(sens, sizes, 6 * 10 * 4)  # the optimum without the extra budget
    limit = sum(unbound.values()) - 1  # an extra budget (bits summed over modules) that optimum breaks
    extra = [ilp.ExtraBudget("bits", {m: {b: float(b) for b in BITS} for m in sens}, limit)]

    def every_step(objective: np.ndarray, *args: object) -> SimpleNamespace:
        return SimpleNamespace(x=np.ones(objective.size), status=0, message="")

    monkeypatch.setattr(ilp, "_solve", every_step)
    with pytest.raises(NNCFExtError, match=r"over the extra budgets \['bits'\]"):
        allocate_bits(sens, sizes, 6 * 10 * 4, extra=extra)


def test_widths_an_extra_budget_rules_out_count_toward_the_smallest_size() -> None:
    """The extra budget leaves 'a' only 2 bits and 'b' only 4: 60 bits, over the budget of 50 (the smallest
    widths give 40). The size check ran before those widths were dropped, and the allocation returned was
    over budget."""
    sens = {"a": {2: 1.0, 8: 0.0}, "b": {2: 1.0, 4: 0.5, 8: 0.0}}
    extra = [ExtraBudget("bops", {"a": {2: 1.0, 8: 100.0}, "b": {2: 100.0, 4: 1.0, 8: 100.0}}, 2)]
    with pytest.raises(ConfigError, match=r"budget of 6\.25 bytes .* the smallest reachable is 7\.5 bytes"):
        allocate_bits(sens, {"a": 10, "b": 10}, 50, extra=extra)
    assert allocate_bits(sens, {"a": 10, "b": 10}, 60, extra=extra) == {"a": 2, "b": 4}
    with pytest.raises(
        ConfigError, match=r"extra\[0\] \(bops\): no bit allocation meets the limit 1\.5: its least is 2"
    ):
        allocate_bits(sens, {"a": 10, "b": 10}, 100, extra=[ExtraBudget("bops", extra[0].cost, 1.5)])


def test_an_extra_budget_in_small_units_is_not_breached() -> None:
    """An absolute tolerance floor let an allocation 1.2x over a limit in small units (1e-13 per unit) pass."""
    sens = {"a": {4: 1.0, 8: 0.0}, "b": {4: 1.0, 8: 0.0}}
    unit = 1e-13
    energy = ExtraBudget("energy", {m: {4: 3 * unit, 8: 6 * unit} for m in sens}, 10 * unit)
    chosen = allocate_bits(sens, {"a": 10, "b": 10}, 1000, extra=[energy])
    assert sum(energy.cost[m][b] for m, b in chosen.items()) <= 10 * unit
    assert sorted(chosen.values()) == [4, 8]


def test_an_extra_budget_mixing_costs_of_1_and_1e6_is_met() -> None:
    """Rows scaled to a unit maximum shrank a slack of 1.25 on a 7.6e6 row below HiGHS's absolute feasibility
    tolerance: HiGHS took m0 at 4 bits, over the limit, and the allocation was refused as unfittable."""
    sens = {"m0": {2: 0.639, 4: 0.0, 8: 0.342}, "m1": {2: 0.344, 4: 0.1, 8: 0.9}}
    cost = {"m0": {2: 6.49, 4: 7630000.0, 8: 10.0}, "m1": {2: 9.0, 4: 7.2, 8: 7.75}}
    chosen = allocate_bits(sens, {"m0": 6, "m1": 48}, 156.0, extra=[ExtraBudget("e0", cost, 7630007.75)])
    assert chosen == {"m0": 8, "m1": 2}  # the optimum by enumeration: 0.342 + 0.344


def test_an_answer_over_a_mixed_scale_budget_is_solved_again_tightened() -> None:
    """Even with rows scaled to a smallest coefficient of 1, HiGHS can take an allocation over a budget whose
    costs span 1 to 1e7 within its tolerances; the solve is repeated with that budget tightened by the excess
    (a fuzz case: the allocation was refused as unfittable)."""
    import itertools

    sens = {
        "m0": {2: 0.57, 3: 0.2, 4: 0.9, 5: 0.136, 6: 0.91, 8: 0.75},
        "m1": {2: 0.1, 3: 0.19, 4: 0.66, 5: 0.07, 6: 0.169, 8: 0.15},
        "m2": {2: 0.6, 3: 0.38, 4: 0.0, 5: 1.0, 6: 0.15, 8: 0.21},
        "m3": {2: 0.1, 3: 0.2, 4: 1.0, 5: 0.293, 6: 0.4, 8: 0.48},
    }
    sizes = {"m0": 25, "m1": 7, "m2": 20, "m3": 6}
    extra = [
        ExtraBudget(name, cost, limit)
        for name, cost, limit in [
            (
                "e0",
                {
                    "m0": {2: 7.0, 3: 9.12, 4: 9.0, 5: 9.0, 6: 4.94, 8: 8.3},
                    "m1": {2: 7760000.0, 3: 2.0, 4: 9400000.0, 5: 5.26, 6: 6.2, 8: 8400000.0},
                    "m2": {2: 6200000.0, 3: 1.0, 4: 2280000.0, 5: 1100000.0, 6: 1.0, 8: 410000.0},
                    "m3": {2: 7.0, 3: 8.6, 4: 4.0, 5: 7900000.0, 6: 6.1, 8: 5.62},
                },
                10040013.0,
            ),
            (
                "e1",
                {
                    "m0": {2: 7.09, 3: 4.1, 4: 6.71, 5: 1.42, 6: 6.5, 8: 8.28},
                    "m1": {2: 0.0, 3: 9.15, 4: 4.0, 5: 7.6, 6: 7.9, 8: 0.16},
                    "m2": {2: 1.1, 3: 7.14, 4: 1.0, 5: 6.51, 6: 5.1, 8: 5.34},
                    "m3": {2: 8.56, 3: 8.2, 4: 6.0, 5: 3.0, 6: 7.54, 8: 1.0},
                },
                15.3,
            ),
        ]
    ]

    def fits(choice: dict[str, int]) -> bool:
        within = [sum(e.cost[m][b] for m, b in choice.items()) <= e.limit for e in extra]
        return sum(sizes[m] * b for m, b in choice.items()) <= 331.0 and all(within)

    options = [
        dict(zip(sens, bits, strict=True)) for bits in itertools.product(*(list(sens[m]) for m in sens))
    ]
    best = min((c for c in options if fits(c)), key=lambda c: sum(sens[m][b] for m, b in c.items()))
    chosen = allocate_bits(sens, sizes, 331.0, extra=extra)
    assert fits(chosen)
    assert sum(sens[m][b] for m, b in chosen.items()) == pytest.approx(
        sum(sens[m][b] for m, b in best.items())
    )
