"""MQAT allocation under a BOPs budget and tables of measured costs, beside (or instead of) the size."""

import itertools
import json
from pathlib import Path

import pytest
import torch

import nncf_ext
from nncf_ext.errors import ConfigError
from nncf_ext.mqat.algo import module_bits
from nncf_ext.mqat.budgets import bops_budget, module_macs
from nncf_ext.mqat.sensitivity import SensitivityTable
from nncf_ext.scopes import WeightInfo
from tests.mqat.models import ModularNet

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
MODULES = {
    "backbone": {"patterns": ["backbone\\."]},
    "fpn": {"names": ["fpn"]},
    "head": {"types": ["linear"]},
}
SIZES = {"backbone": 3 * 8 * 9 + 8 * 8 * 9, "fpn": 64, "head": 32}
MACS = {"backbone": 4 * 64 * SIZES["backbone"], "fpn": 4 * 64 * 64, "head": 4 * 32}  # batch 4, 8 x 8 maps
BITS = (2, 4, 8)
COSTS = {
    "backbone": {2: 5.0, 4: 1.0, 8: 0.0},
    "fpn": {2: 2.0, 4: 0.5, 8: 0.0},
    "head": {2: 3.0, 4: 0.5, 8: 0.0},
}


def allocate(tmp_path: Path, activations: object = 8, **allocation: object) -> dict[str, int]:
    SensitivityTable("metric", 1.0, COSTS).save(tmp_path / "s.json")
    entry = {"algorithm": "mqat", "modules": MODULES, "activations": {"bits": activations},
             "allocation": {"sensitivity": str(tmp_path / "s.json"), "candidate_bits": list(BITS),
                            "size": "weights", **allocation}}  # fmt: skip
    pipeline = nncf_ext.create_compression(ModularNet(), {"compression": [entry]}, X)
    return module_bits(pipeline.algorithms[0])  # type: ignore[arg-type]


def brute_force(size_ratio: float, bops_ratio: float, act: int | None) -> dict[str, int]:
    """The least summed cost over every allocation within both budgets."""
    best = None
    for choice in itertools.product(BITS, repeat=3):
        bits = dict(zip(SIZES, choice, strict=True))
        size = sum(SIZES[m] * b for m, b in bits.items())
        bops = sum(MACS[m] * b * (b if act is None else act) for m, b in bits.items())
        if size <= 32 * sum(SIZES.values()) / size_ratio and bops <= 1024 * sum(MACS.values()) / bops_ratio:
            cost = sum(COSTS[m][b] for m, b in bits.items())
            best = min(best or (cost, bits), (cost, bits), key=lambda t: t[0])
    assert best is not None
    return best[1]


def test_the_bops_budget_is_met_at_the_least_cost(tmp_path: Path) -> None:
    """At 4x size every module keeps 8 bits. 32x fewer BOPs with 8-bit activations needs 4 weight bits on
    average over the MACs: all three modules go to 4 bits, and the BOPs then equal the budget exactly (the
    head's 128 MACs at 8 bits would exceed it by 4096 bit-operations); at 40x the backbone takes 2 bits."""
    size_only = allocate(tmp_path, target_compression=4)
    assert set(size_only.values()) == {8}
    both = allocate(tmp_path, target_compression=4, bops_compression=32)
    assert both == brute_force(4, 32, 8) == {"backbone": 4, "fpn": 4, "head": 4}
    assert sum(MACS[m] * b * 8 for m, b in both.items()) == 1024 * sum(MACS.values()) / 32
    assert allocate(tmp_path, target_compression=4, bops_compression=40) == brute_force(4, 40, 8)
    module = allocate(
        tmp_path, activations="module", bops_compression=30
    )  # activations at each module's bits
    assert module == brute_force(1, 30, None)


def test_bops_budget_costs_macs_times_both_widths() -> None:
    weights = {"a": [WeightInfo("a.w", "a", "Conv2d", ("a/conv2d/0", "a/conv2d/1"), ("conv2d", "conv2d"), (2, 2),
                                op_macs=(100, 20))]}  # fmt: skip
    assert module_macs(weights, "p") == {"a": 120}
    budget, fp32 = bops_budget(weights, [2, 4], 8, 4.0, "p")
    assert fp32 == 120 * 1024 and budget.limit == 120 * 256
    assert budget.cost == {"a": {2: 120 * 16, 4: 120 * 32}}
    assert bops_budget(weights, [2, 4], "module", 4.0, "p")[0].cost == {"a": {2: 120 * 4, 4: 120 * 16}}
    assert bops_budget(weights, [2, 4], None, 4.0, "p")[0].cost == {"a": {2: 120 * 64, 4: 120 * 128}}
    with pytest.raises(ConfigError, match="without its operations' MACs"):
        module_macs({"a": [WeightInfo("a.w", "a", "Conv2d", ("a/conv2d/0",), ("conv2d",), (2, 2))]}, "p")
    uncounted = WeightInfo("a.w", "a", "X", ("a/op/0",), ("op",), (2, 2), op_macs=(None,))
    with pytest.raises(ConfigError, match=r"cannot count the MACs of 'a/op/0' \(op\)"):
        module_macs({"a": [uncounted]}, "p")


def test_a_parameter_used_elementwise_adds_no_macs(tmp_path: Path) -> None:
    """A scale parameter selected by name (as NetVLAD's centroids are) joins a module's bits but no MACs."""

    class Scaled(ModularNet):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1, 8, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            features = self.backbone(x) * self.scale
            return self.head((self.fpn(features) + features).mean((2, 3)))

    SensitivityTable("metric", 1.0, COSTS).save(tmp_path / "s.json")
    modules = {**MODULES, "fpn": {"names": ["fpn", "scale"]}}
    entry = {"algorithm": "mqat", "modules": modules, "activations": {"bits": 8},
             "target_scope": {"names": ["backbone", "fpn", "head", "scale"]},
             "allocation": {"sensitivity": str(tmp_path / "s.json"), "candidate_bits": list(BITS),
                            "bops_compression": 32}}  # fmt: skip
    pipeline = nncf_ext.create_compression(Scaled(), {"compression": [entry]}, X)
    algorithm = pipeline.algorithms[0]
    assert "scale" in [w.name for w in algorithm.modules["fpn"]]  # type: ignore[attr-defined]
    assert module_macs(algorithm.modules, "p") == MACS  # type: ignore[attr-defined]
    assert module_bits(algorithm) == brute_force(1, 32, 8)  # type: ignore[arg-type]


def test_an_unreachable_bops_budget_states_the_most_reachable(tmp_path: Path) -> None:
    # every module at 2 bits with 8-bit activations: 1024 / 16 = 64x fewer BOPs at most
    with pytest.raises(ConfigError, match="the most reachable is 64x") as info:
        allocate(tmp_path, target_compression=4, bops_compression=65)
    assert info.value.path == "compression[0].allocation.bops_compression"
    allocate(tmp_path, target_compression=4, bops_compression=64)


def test_a_table_of_measured_costs_is_a_budget(tmp_path: Path) -> None:
    """A latency table where only the head is slow at 8 bits (as on a device without 8-bit kernels for
    it): a limit under the all-8-bit latency narrows the head, which a size budget alone never would."""
    latency = {m: {str(b): 1.0 for b in BITS} for m in SIZES}
    latency["head"]["8"] = 5.0
    (tmp_path / "latency.json").write_text(json.dumps({"costs": latency}))
    budget = {"table": str(tmp_path / "latency.json"), "limit": 4.0}
    assert allocate(tmp_path, budgets=[budget]) == {"fpn": 8, "backbone": 8, "head": 4}
    with pytest.raises(ConfigError, match="its least is 3") as info:
        allocate(tmp_path, budgets=[{**budget, "limit": 2.5}])
    assert info.value.path == "compression[0].allocation.budgets[0]"
    latency["backbone"]["8"] = float("inf")  # no 8-bit kernel for it: never taken, whatever the limit
    (tmp_path / "latency.json").write_text(json.dumps({"costs": latency}))
    assert allocate(tmp_path, budgets=[{**budget, "limit": 100}]) == {"fpn": 8, "backbone": 4, "head": 8}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"backbone": {}}, "expected"),
        ({"costs": {"neck": {}}}, r"unknown modules \['neck'\]"),
        ({"costs": {"backbone": {"2": 1, "4": 1, "8": 1}}}, "no costs for module 'fpn'"),
        ({"costs": {m: {"2": 1, "4": 1} for m in SIZES}}, "module 'backbone' at 8 bits costs None"),
        (
            {"costs": {m: {"2": 1, "4": -1, "8": 1} for m in SIZES}},
            "at 4 bits costs -1: expected a number >= 0",
        ),
        ({"costs": {m: {"2": 1, "4": True, "8": 1} for m in SIZES}}, "at 4 bits costs True"),
        ({"costs": {m: {"2": 1, "4": 10**400, "8": 1} for m in SIZES}}, "at 4 bits costs 1000"),
        (
            {"costs": {m: {"2": float("inf"), "4": float("inf"), "8": float("inf")} for m in SIZES}},
            "Infinity at every",
        ),
    ],
)
def test_bad_cost_tables(tmp_path: Path, table: dict, message: str) -> None:
    (tmp_path / "t.json").write_text(json.dumps(table))
    with pytest.raises(ConfigError, match=message) as info:
        allocate(tmp_path, budgets=[{"table": str(tmp_path / "t.json"), "limit": 4.0}])
    assert info.value.path == "compression[0].allocation.budgets[0].table"


def test_budget_config_errors_and_round_trip(tmp_path: Path) -> None:
    def config(**allocation: object) -> dict:
        entry = {
            "algorithm": "mqat",
            "modules": MODULES,
            "allocation": {"sensitivity": "s.json", **allocation},
        }
        return {"compression": [entry]}

    with pytest.raises(ConfigError, match='needs it, "bops_compression" or "budgets"') as info:
        nncf_ext.load_config(config())
    assert info.value.path == "compression[0].allocation.target_compression"
    with pytest.raises(ConfigError, match="did you mean 'target_compression'") as info:
        nncf_ext.load_config(config(target_compresion=4))
    with pytest.raises(ConfigError, match="expected a list") as info:
        nncf_ext.load_config(config(budgets={"table": "t.json", "limit": 1}))
    with pytest.raises(ConfigError) as info:
        nncf_ext.load_config(config(bops_compression=1))
    assert info.value.path == "compression[0].allocation.bops_compression"
    with pytest.raises(ConfigError) as info:
        nncf_ext.load_config(config(budgets=[{"table": "t.json", "limit": -1}]))
    assert info.value.path == "compression[0].allocation.budgets[0].limit"
    with pytest.raises(ConfigError, match="unknown key") as info:
        nncf_ext.load_config(config(budgets=[{"table": "t.json", "limit": 1, "unit": "ms"}]))
    assert info.value.path == "compression[0].allocation.budgets[0].unit"
    parsed = nncf_ext.load_config(config(bops_compression=8, budgets=[{"table": "t.json", "limit": 2}]))
    assert nncf_ext.load_config(json.loads(json.dumps(parsed.to_dict()))) == parsed
