import itertools
import json
from pathlib import Path

import numpy as np
import openvino as ov
import pytest
import torch
from nncf.torch.quantization.layers import BaseQuantizer

import nncf_ext
from nncf_ext.errors import ConfigError
from nncf_ext.hooks import hooks_of_type
from nncf_ext.mqat import allocate_bits
from nncf_ext.mqat.algo import MQAT, allocation_costs, module_bits
from nncf_ext.mqat.sensitivity import SensitivityTable
from tests.mqat.models import ModularNet

X = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
MODULES = {
    "backbone": {"patterns": ["backbone\\."]},
    "fpn": {"names": ["fpn"]},
    "head": {"types": ["linear"]},
}


def mqat(**options: object) -> dict:
    return {"compression": [{"algorithm": "mqat", "modules": MODULES, **options}]}


def weight_quantizers(model: torch.nn.Module) -> dict[str, BaseQuantizer]:
    return hooks_of_type(model, BaseQuantizer)  # type: ignore[return-value]


def test_modules_are_quantized_in_order_with_their_bits() -> None:
    torch.manual_seed(0)
    model = ModularNet()
    config = mqat(bits={"backbone": 8, "fpn": 2, "head": 4}, order=["fpn", "head", "backbone"],
                  activations={"bits": 8}, start_epoch=1, epochs_per_stage=2)  # fmt: skip
    pipeline = nncf_ext.create_compression(model, config, X)
    quantizers = weight_quantizers(model)
    assert {n: q.num_bits for n, q in quantizers.items()} == {
        "backbone.0.weight": 8, "backbone.2.weight": 8, "fpn.0.weight": 2, "head.weight": 4,
    }  # fmt: skip
    expected_on = {0: set(), 1: {"fpn"}, 2: {"fpn"}, 3: {"fpn", "head"}, 5: {"fpn", "head", "backbone"}}
    (algorithm,) = pipeline.algorithms
    assert isinstance(algorithm, MQAT)
    for epoch, on in expected_on.items():
        pipeline.epoch_step(epoch)
        enabled = {n.split(".")[0] for n, q in quantizers.items() if q.is_enabled_quantization()}
        assert enabled == on, epoch
        assert set(algorithm.quantized_modules()) == on
    stats = pipeline.statistics()
    assert {layer.name: layer.bits for layer in stats.layers}["fpn.0.weight"] == 2


def test_stages_by_steps_begin_every_n_steps_and_resume() -> None:
    """``steps_per_stage``: the first stage at ``start_epoch``, the next ones every N ``step()`` calls after it;
    a restored pipeline continues the count (and freezes what the original froze)."""
    config = mqat(bits={"backbone": 8, "fpn": 4, "head": 4}, order=["head", "fpn", "backbone"],
                  start_epoch=1, steps_per_stage=3, freeze_quantized=True)  # fmt: skip
    model = ModularNet()
    pipeline = nncf_ext.create_compression(model, config, X)
    (algorithm,) = pipeline.algorithms
    assert isinstance(algorithm, MQAT)
    assert [algorithm.stage_step(m) for m in algorithm.order] == [0, 3, 6]
    pipeline.epoch_step(0)
    for _ in range(10):  # steps before start_epoch do not count
        pipeline.step()
    assert algorithm.quantized_modules() == []
    pipeline.epoch_step(1)
    seen = []
    for _ in range(5):
        seen.append(algorithm.quantized_modules())
        pipeline.step()
    assert seen == [["head"]] * 3 + [["head", "fpn"]] * 2
    state = pipeline.state_dict()
    pipeline.step()
    assert algorithm.quantized_modules() == ["head", "fpn", "backbone"]
    assert not model.fpn[0].weight.requires_grad and model.backbone[0].weight.requires_grad

    restored = ModularNet()
    again = nncf_ext.create_compression(restored, config, X)
    again.load_state_dict(state)
    (resumed,) = again.algorithms
    assert isinstance(resumed, MQAT)
    assert resumed.quantized_modules() == ["head", "fpn"]
    assert not restored.head.weight.requires_grad and restored.fpn[0].weight.requires_grad
    again.step()
    assert resumed.quantized_modules() == ["head", "fpn", "backbone"]
    assert not restored.fpn[0].weight.requires_grad and restored.backbone[0].weight.requires_grad
    with pytest.raises(ConfigError, match='or "steps_per_stage"') as info:
        nncf_ext.create_compression(
            ModularNet(), mqat(**{**config["compression"][0], "epochs_per_stage": 1}), X
        )
    assert info.value.path == "compression[0].steps_per_stage"


def test_frozen_modules_stop_training() -> None:
    model = ModularNet()
    model.backbone[2].weight.requires_grad_(False)  # frozen by the user: stays frozen
    config = mqat(
        bits={"backbone": 8, "fpn": 4, "head": 4}, order=["head", "fpn", "backbone"], freeze_quantized=True,
        activations={"bits": 8},
    )  # fmt: skip
    pipeline = nncf_ext.create_compression(model, config, X)
    (algorithm,) = pipeline.algorithms
    head_ranges = [p for q in algorithm.stages["head"].activation_quantizers.values() for p in q.parameters()
                   if p.dtype.is_floating_point]  # fmt: skip
    assert head_ranges and all(p.requires_grad for p in head_ranges)
    pipeline.epoch_step(1)
    assert not model.head.weight.requires_grad and model.fpn[0].weight.requires_grad
    assert not any(p.requires_grad for p in head_ranges)  # the head's activation ranges stop too
    pipeline.epoch_step(2)
    assert not model.fpn[0].weight.requires_grad and model.backbone[0].weight.requires_grad
    assert not model.backbone[2].weight.requires_grad


def test_simultaneous_quantization_freezes_nothing() -> None:
    """HAWQ-V3's one stage quantizes every module at once: ``freeze_quantized`` has no earlier stage to stop."""
    model = ModularNet()
    config = mqat(bits={"backbone": 8, "fpn": 4, "head": 4}, order="simultaneous", freeze_quantized=True)
    pipeline = nncf_ext.create_compression(model, config, X)
    for epoch in range(3):
        pipeline.epoch_step(epoch)
    assert all(p.requires_grad for p in model.parameters() if p.dtype.is_floating_point)  # weights, ranges


def test_allocation_from_a_sensitivity_table(tmp_path: Path) -> None:
    table = SensitivityTable("metric", 1.0, {
        "backbone": {2: 5.0, 4: 1.0, 8: 0.0}, "fpn": {2: 0.01, 4: 0.0, 8: 0.0}, "head": {2: 3.0, 4: 0.5, 8: 0.0},
    })  # fmt: skip
    table.save(tmp_path / "s.json")
    model = ModularNet()
    allocation = {
        "sensitivity": str(tmp_path / "s.json"),
        "target_compression": 6,
        "candidate_bits": [2, 4, 8],
    }
    pipeline = nncf_ext.create_compression(model, mqat(allocation=allocation), X)
    (algorithm,) = pipeline.algorithms
    bits = module_bits(algorithm)  # type: ignore[arg-type]
    sizes = {"backbone": 3 * 8 * 9 + 8 * 8 * 9, "fpn": 64, "head": 32}
    params = sum(p.numel() for p in ModularNet().parameters())
    budget = params * 32 / 6 - 32 * (params - sum(sizes.values()))
    feasible = [
        dict(zip(sizes, c, strict=True))
        for c in itertools.product([2, 4, 8], repeat=3)
        if sum(n * b for n, b in zip(sizes.values(), c, strict=True)) <= budget
    ]
    best = min(sum(table.costs[m][b] for m, b in f.items()) for f in feasible)
    assert sum(table.costs[m][b] for m, b in bits.items()) == best
    assert sum(sizes[m] * b for m, b in bits.items()) <= budget
    assert bits == {"fpn": 8, "backbone": 4, "head": 8}  # fpn costs 0 at 4 and 8 bits: spare budget is spent

    assert next(iter(bits)) == "fpn"  # least sensitive at its bits: quantized first
    with pytest.raises(ConfigError, match="smallest reachable") as info:
        nncf_ext.create_compression(
            ModularNet(), mqat(allocation={**allocation, "target_compression": 40}), X
        )
    assert info.value.path == "compression[0].allocation.target_compression"


def test_allocation_size_model_or_weights(tmp_path: Path) -> None:
    """At 4x, all-8-bit fits a budget over the quantized weights but not one over the whole model (biases
    and BatchNorm stay 32-bit there), so "model" must narrow a module and "weights" need not."""
    SensitivityTable("metric", 1.0, {
        m: {2: 0.9, 4: 0.2, 8: 0.0} for m in ("backbone", "fpn", "head")
    }).save(tmp_path / "s.json")  # fmt: skip
    allocation = {
        "sensitivity": str(tmp_path / "s.json"),
        "target_compression": 4,
        "candidate_bits": [2, 4, 8],
    }
    chosen = {}
    for size in ("model", "weights"):
        pipeline = nncf_ext.create_compression(ModularNet(), mqat(allocation={**allocation, "size": size}), X)
        chosen[size] = module_bits(pipeline.algorithms[0])  # type: ignore[arg-type]
    assert set(chosen["weights"].values()) == {8}
    assert min(chosen["model"].values()) < 8
    with pytest.raises(ConfigError, match="size"):
        nncf_ext.create_compression(ModularNet(), mqat(allocation={**allocation, "size": "all"}), X)


def test_model_size_budget_counts_every_parameter_at_its_own_precision(tmp_path: Path) -> None:
    """An fp16 model at 4x: the budget is a quarter of its 16-bit size, the biases staying 16-bit."""
    table = SensitivityTable(
        "metric", 1.0, {m: {2: 0.9, 4: 0.2, 8: 0.0} for m in ("backbone", "fpn", "head")}
    )
    table.save(tmp_path / "s.json")
    allocation = {
        "sensitivity": str(tmp_path / "s.json"),
        "target_compression": 4,
        "candidate_bits": [2, 4, 8],
    }
    pipeline = nncf_ext.create_compression(ModularNet().half(), mqat(allocation=allocation), X.half())
    bits = module_bits(pipeline.algorithms[0])  # type: ignore[arg-type]
    sizes = {"backbone": 3 * 8 * 9 + 8 * 8 * 9, "fpn": 64, "head": 32}
    params = sum(p.numel() for p in ModularNet().parameters())
    budget = params * 16 / 4 - 16 * (params - sum(sizes.values()))
    feasible = [
        sum(table.costs[m][b] for m, b in zip(sizes, c, strict=True))
        for c in itertools.product([2, 4, 8], repeat=3)
        if sum(n * b for n, b in zip(sizes.values(), c, strict=True)) <= budget
    ]
    assert sum(sizes[m] * b for m, b in bits.items()) <= budget
    assert sum(table.costs[m][b] for m, b in bits.items()) == min(feasible)


def test_a_table_measured_in_another_weight_format_is_refused(tmp_path: Path) -> None:
    costs = {m: {2: 0.9, 4: 0.2, 8: 0.0} for m in ("backbone", "fpn", "head")}
    settings = {"mode": "asymmetric", "per_channel": True, "init": "mse"}
    SensitivityTable("metric", 1.0, costs, settings=settings).save(tmp_path / "s.json")
    allocation = {
        "sensitivity": str(tmp_path / "s.json"),
        "target_compression": 8,
        "candidate_bits": [2, 4, 8],
    }
    with pytest.raises(ConfigError, match="mode='asymmetric', this algorithm quantizes them with mode='symm"):
        nncf_ext.create_compression(ModularNet(), mqat(allocation=allocation), X)
    weights = {"mode": "asymmetric"}
    pipeline = nncf_ext.create_compression(ModularNet(), mqat(allocation=allocation, weights=weights), X)
    assert set(module_bits(pipeline.algorithms[0])) == set(MODULES)  # type: ignore[arg-type]


def test_resuming_after_the_table_changed_is_refused(tmp_path: Path) -> None:
    from nncf_ext.errors import CheckpointError

    path = tmp_path / "s.json"
    costs = {"backbone": {2: 5.0, 4: 1.0, 8: 0.0}, "head": {2: 3.0, 4: 0.5, 8: 0.0}}
    SensitivityTable("metric", 1.0, {**costs, "fpn": {2: 0.01, 4: 0.0, 8: 0.0}}).save(path)
    config = mqat(
        allocation={"sensitivity": str(path), "target_compression": 6.5, "candidate_bits": [2, 4, 8]}
    )
    model = ModularNet()
    pipeline = nncf_ext.create_compression(model, config, X)
    pipeline.epoch_step(1)
    state = pipeline.state_dict()
    SensitivityTable("metric", 1.0, {**costs, "fpn": {2: 5.0, 4: 1.0, 8: 0.0}}).save(path)  # measured again
    resumed = nncf_ext.create_compression(ModularNet(), config, X)
    assert module_bits(resumed.algorithms[0]) != module_bits(pipeline.algorithms[0])  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"MQAT bits .* differ"):
        resumed.load_state_dict(state)
    SensitivityTable("metric", 1.0, {**costs, "fpn": {2: 0.01, 4: 0.0, 8: 0.0}}).save(path)
    same = nncf_ext.create_compression(ModularNet(), config, X)
    same.load_state_dict(state)  # the same allocation resumes
    assert same.epoch == 1


def test_a_width_whose_evaluation_failed_is_never_taken() -> None:
    costs = allocation_costs({2: float("nan"), 4: 0.3, 8: 0.0})
    assert costs[2] == float("inf") and costs[4] == pytest.approx(0.3, abs=1e-5)
    # a failed wider width does not take the cost of a narrower one
    wide = allocation_costs({2: 0.5, 4: 0.1, 8: float("nan")})
    assert wide[8] == float("inf")
    assert allocate_bits({"a": wide}, {"a": 100}, 100 * 8) == {"a": 4}
    with pytest.raises(ConfigError, match=r"tied modules \['a', 'b'\] have no bit-width"):
        allocate_bits(
            {"a": {2: float("inf"), 4: 0.0}, "b": {2: 0.0, 4: float("inf")}},
            {"a": 10, "b": 10},
            100,
            ties=[["a", "b"]],
        )
    with pytest.raises(ConfigError, match="'b' has a NaN cost"):
        allocate_bits({"a": {2: 0.0}, "b": {2: float("nan")}}, {"a": 10, "b": 10}, 100, ties=[["a", "b"]])
    other = allocation_costs({2: 0.5, 4: 0.1, 8: 0.0})
    assert allocate_bits({"a": costs, "b": other}, {"a": 100, "b": 100}, 100 * 12) == {"a": 8, "b": 4}
    with pytest.raises(ConfigError, match="'a' has no bit-width of finite cost"):
        allocate_bits({"a": {2: float("inf")}, "b": other}, {"a": 100, "b": 100}, 100 * 12)
    with pytest.raises(ConfigError, match=r"'a' has a NaN cost at \[2\] bits"):
        allocate_bits({"a": {2: float("nan"), 8: 0.0}, "b": other}, {"a": 100, "b": 100}, 100 * 12)


def test_allocation_costs_remove_noise_and_prefer_wider_formats() -> None:
    costs = allocation_costs({2: 0.3, 4: -0.01, 6: 0.02, 8: 0.0})
    assert costs[2] == pytest.approx(0.3, abs=1e-5) and all(
        costs[b] == pytest.approx(0.0, abs=1e-5) for b in (4, 6, 8)
    )
    assert costs[2] > costs[4] > costs[6] > costs[8]  # never more for more bits; ties go to more bits


def test_exported_ir_carries_the_chosen_precisions(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ModularNet()
    config = mqat(
        bits={"backbone": 8, "fpn": 3, "head": 4}, order="simultaneous", activations={"bits": "module"}
    )
    nncf_ext.create_compression(model, config, X)
    result = nncf_ext.export_openvino(model, X, tmp_path / "m.xml")
    assert result.weights == {
        "backbone.0.weight": "i8",
        "backbone.2.weight": "i8",
        "fpn.0.weight": "i4",
        "head.weight": "i4",
    }
    ov_model = ov.Core().read_model(result.xml_path)
    levels = sorted(
        int(op.get_attributes()["levels"])
        for op in ov_model.get_ops()
        if op.get_type_name() == "FakeQuantize"
    )
    assert levels == [8, 16, 256, 256]  # activations at the module's bits: fpn 3, head 4, backbone 8
    codes = {op.get_friendly_name().split("/")[0]: op.get_data() for op in ov_model.get_ops()
             if op.get_type_name() == "Constant" and op.get_friendly_name().endswith("/codes")}  # fmt: skip
    packed = codes["fpn.0.weight"].view("uint8")  # two signed nibbles per byte
    nibbles = np.stack([packed & 0xF, packed >> 4]).astype(int)
    levels_used = np.where(nibbles >= 8, nibbles - 16, nibbles)
    assert levels_used.min() >= -4 and levels_used.max() <= 3  # 3-bit levels stored in an i4


@pytest.mark.parametrize(
    ("modules", "path", "message"),
    [
        (
            {**MODULES, "fpn": {"patterns": ["^neck"]}},
            "compression[0].modules.fpn.patterns[0]",
            "matches no weight",
        ),
        (
            {**MODULES, "head": {"patterns": ["fpn|head"]}},
            "compression[0].modules.head",
            "overlaps module 'fpn'",
        ),
        ({**MODULES, "extra": {}}, "compression[0].modules.extra", "needs names"),
    ],
)
def test_bad_module_specs(modules: dict, path: str, message: str) -> None:
    config = {"compression": [{"algorithm": "mqat", "modules": modules, "bits": {m: 8 for m in modules}}]}
    with pytest.raises(ConfigError, match=message) as info:
        nncf_ext.create_compression(ModularNet(), config, X)
    assert info.value.path == path


def test_empty_module_and_bits_errors() -> None:
    keep = {"names": ["fpn.0.weight"]}
    with pytest.raises(ConfigError, match="is empty") as info:
        nncf_ext.create_compression(
            ModularNet(), mqat(bits={"backbone": 8, "fpn": 4, "head": 4}, keep_apart=keep), X
        )
    assert info.value.path == "compression[0].modules.fpn"
    with pytest.raises(ConfigError, match="matches no weight") as info:  # a typo must not pass silently
        nncf_ext.create_compression(
            ModularNet(), mqat(bits={"backbone": 8, "fpn": 4, "head": 4}, keep_apart={"names": ["hed"]}), X
        )
    assert info.value.path == "compression[0].keep_apart.names[0]"
    with pytest.raises(ConfigError, match="at least one") as info:
        nncf_ext.load_config(mqat(allocation={"sensitivity": "x.json", "target_compression": 4,
                                              "candidate_bits": []}))  # fmt: skip
    assert info.value.path == "compression[0].allocation.candidate_bits"
    with pytest.raises(ConfigError, match="unknown module") as info:
        nncf_ext.create_compression(
            ModularNet(), mqat(bits={"backbone": 8, "fpn": 4, "head": 4, "neck": 2}), X
        )
    with pytest.raises(ConfigError, match="either"):
        nncf_ext.load_config(
            mqat(bits={"fpn": 4}, allocation={"sensitivity": "x.json", "target_compression": 4})
        )
    with pytest.raises(ConfigError, match="needs an"):
        nncf_ext.load_config(mqat(bits={"fpn": 4}, order="sensitivity"))


def test_config_round_trip() -> None:
    config = nncf_ext.load_config(
        mqat(bits={"backbone": 8, "fpn": 2, "head": 4}, activations={"bits": "module"})
    )
    assert nncf_ext.load_config(json.loads(json.dumps(config.to_dict()))) == config
