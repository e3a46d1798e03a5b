import json
import math
from pathlib import Path

import pytest
import torch

from nncf_ext.model import get_weight, model_weights
from nncf_ext.mqat import (
    ModuleSpec,
    SensitivityTable,
    hessian_sensitivity,
    hessian_traces,
    measure_sensitivity,
    resolve_modules,
)
from nncf_ext.mqat.sensitivity import quantized_weight
from nncf_ext.quantizers import MODES
from nncf_ext.scopes import Scope
from tests.mqat.models import fragile_fpn_net

BITS = [2, 4, 8]


def setup() -> tuple[torch.nn.Module, dict, torch.Tensor]:
    model = fragile_fpn_net()
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    modules = resolve_modules(ModuleSpec(), model_weights(model, x[:1]), Scope(), "compression[0]")
    return model, modules, x


def test_default_modules_are_top_level_submodules() -> None:
    _, modules, _ = setup()
    assert {m: [w.name for w in ws] for m, ws in modules.items()} == {
        "backbone": ["backbone.0.weight", "backbone.2.weight"],
        "fpn": ["fpn.0.weight"],
        "head": ["head.weight"],
    }


def test_metric_and_hessian_rank_the_fragile_module_most_sensitive(tmp_path: Path) -> None:
    model, modules, x = setup()
    reference = model(x).detach()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def neg_error() -> float:
        with torch.no_grad():
            return -float((model(x) - reference).pow(2).mean())

    table = measure_sensitivity(model, modules, BITS, neg_error, cache=tmp_path / "s.json")
    assert table.order()[-1] == "fpn"
    assert table.costs["fpn"][2] > table.costs["fpn"][4] > table.costs["fpn"][8] >= 0  # fewer bits hurt more
    assert table.costs["fpn"][2] > 100 * max(table.costs["backbone"][2], table.costs["head"][2])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # weights restored

    def loss() -> torch.Tensor:
        return (model(x) - reference - 0.1).pow(2).mean()

    hawq = hessian_sensitivity(model, modules, BITS, loss, samples=16)
    assert hawq.order()[-1] == "fpn"
    # a concave loss has a negative Hessian trace: its magnitude still ranks the same module most sensitive
    concave = hessian_sensitivity(model, modules, BITS, lambda: -loss(), samples=16)
    assert concave.order()[-1] == "fpn"
    assert all(c >= 0 for per in concave.costs.values() for c in per.values())
    assert hawq.costs["fpn"][2] > 100 * max(hawq.costs["backbone"][2], hawq.costs["head"][2])
    # the cache is used when method, modules and bits match
    cached = measure_sensitivity(model, modules, BITS, lambda: 1 / 0, cache=tmp_path / "s.json")
    assert cached.costs == table.costs
    # but not for other candidate bits, fewer or more
    for bits in ([2, 4], [2, 4, 6, 8]):
        with pytest.raises(ZeroDivisionError):
            measure_sensitivity(model, modules, bits, lambda: 1 / 0, cache=tmp_path / "s.json")
    # and measured again when a module holds other weights under the same name
    moved = {
        "backbone": modules["backbone"],
        "fpn": modules["fpn"] + modules["head"],
        "head": modules["head"],
    }
    calls = []
    measure_sensitivity(model, moved, BITS, lambda: calls.append(1) or 0.0, cache=tmp_path / "s.json")
    assert calls
    # or a Hessian table with other settings
    hessian_sensitivity(model, modules, BITS, loss, samples=4, cache=tmp_path / "h.json")
    with pytest.raises(ZeroDivisionError):
        hessian_sensitivity(model, modules, BITS, lambda: 1 / 0, samples=8, cache=tmp_path / "h.json")
    assert hessian_sensitivity(
        model, modules, BITS, lambda: 1 / 0, samples=4, cache=tmp_path / "h.json"
    ).settings == {"samples": 4, "traces": "eval", "mode": "symmetric", "per_channel": True, "init": "mse"}
    # a table measured before the traces were taken in eval mode is measured again
    old = json.loads((tmp_path / "h.json").read_text())
    del old["settings"]["traces"]
    (tmp_path / "h.json").write_text(json.dumps(old))
    with pytest.raises(ZeroDivisionError):
        hessian_sensitivity(model, modules, BITS, lambda: 1 / 0, samples=4, cache=tmp_path / "h.json")


def test_a_loss_to_minimise_gives_positive_costs() -> None:
    """``higher_is_better=False`` (a loss): quantizing raises the loss, and the cost is that rise."""
    model, modules, x = setup()
    reference = model(x).detach()

    def error() -> float:
        with torch.no_grad():
            return float((model(x) - reference).pow(2).mean())

    table = measure_sensitivity(model, modules, BITS, error, higher_is_better=False)
    assert table.baseline == 0.0
    assert table.costs["fpn"][2] > table.costs["fpn"][4] > table.costs["fpn"][8] > 0
    assert all(c == 0 for m in ("backbone", "head") for c in table.costs[m].values())  # ternary: lossless
    assert table.order()[-1] == "fpn"


def test_hawq_cost_is_the_mean_trace_times_the_perturbation() -> None:
    """Tr(H) / n x ||Q(W) - W||^2 per module, with n its number of weights (HAWQ-V3)."""
    model, modules, x = setup()
    reference = model(x).detach()

    def loss() -> torch.Tensor:
        return (model(x) - reference - 0.1).pow(2).mean()

    table = hessian_sensitivity(model, modules, BITS, loss, samples=16)
    traces = hessian_traces(model, modules, loss, samples=16)
    for name, weights in modules.items():
        n = sum(w.numel for w in weights)
        perturbation = sum(
            float((quantized_weight(p, 4, "symmetric", per_channel=True, init="mse") - p).pow(2).sum())
            for p in (get_weight(model, w.name).detach() for w in weights)
        )
        assert table.costs[name][4] == pytest.approx(abs(traces[name]) / n * perturbation, rel=1e-6)


def test_hutchinson_trace_matches_the_exact_trace() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(6, 3, bias=False)

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    model = Wrapper()
    x = torch.randn(10, 6)
    modules = resolve_modules(ModuleSpec(), model_weights(model, x), Scope(), "c")
    # loss = sum (W x)^2: the Hessian of each output row is 2 X^T X, so Tr(H) = 3 * 2 * ||X||_F^2
    exact = 3 * 2 * float(x.pow(2).sum())
    estimate = hessian_traces(model, modules, lambda: model(x).pow(2).sum(), samples=400)["fc"]
    assert abs(estimate - exact) / exact < 0.05


def test_hessian_sensitivity_leaves_batchnorm_statistics_and_modes_as_they_were() -> None:
    """Measured in eval mode, as PyHessian: a training-mode pass would move the running statistics of the
    model that every method then fine-tunes, and dropout would make the trace random."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
            self.head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x).mean((2, 3)))

    model = Net().train()
    model.backbone[0].eval()  # a submodule's own mode is kept too
    x = torch.randn(8, 3, 6, 6) * 3 + 1
    modules = resolve_modules(ModuleSpec(), model_weights(model, x[:1]), Scope(), "c")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = hessian_sensitivity(model, modules, BITS, lambda: model(x).pow(2).sum(), samples=8)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.training and model.backbone[1].training and model.head[0].training
    assert not model.backbone[0].training
    again = hessian_sensitivity(model, modules, BITS, lambda: model(x).pow(2).sum(), samples=8)
    assert again.costs == table.costs  # no dropout mask drawn: the same traces
    with torch.no_grad():
        assert table.baseline == pytest.approx(float(model.eval()(x).pow(2).sum()))


def test_sensitivity_quantizes_in_the_given_weight_format_and_records_it(tmp_path: Path) -> None:
    from nncf_ext.mqat import quantized_weight

    model, modules, x = setup()
    with torch.no_grad():
        model.fpn[0].weight.abs_()  # all positive: an asymmetric range covers it with twice the levels

    def loss() -> torch.Tensor:
        return model(x).pow(2).mean()

    weight = model.fpn[0].weight.detach()
    errors = {mode: float((quantized_weight(weight, 2, mode) - weight).pow(2).sum()) for mode in MODES}
    assert errors["asymmetric"] < 0.5 * errors["symmetric"]
    tables = {
        mode: hessian_sensitivity(model, modules, BITS, loss, samples=4, mode=mode, cache=tmp_path / "h.json")
        for mode in MODES
    }
    ratio = tables["symmetric"].costs["fpn"][2] / tables["asymmetric"].costs["fpn"][2]
    assert ratio == pytest.approx(errors["symmetric"] / errors["asymmetric"], rel=1e-4)
    assert tables["asymmetric"].settings == {
        "samples": 4,
        "traces": "eval",
        "mode": "asymmetric",
        "per_channel": True,
        "init": "mse",
    }
    # a metric table measured per tensor is not reused for per-channel weights
    measure_sensitivity(model, modules, BITS, lambda: 0.0, per_channel=False, cache=tmp_path / "s.json")
    with pytest.raises(ZeroDivisionError):
        measure_sensitivity(model, modules, BITS, lambda: 1 / 0, cache=tmp_path / "s.json")


def test_an_interrupted_save_leaves_the_previous_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache cut short (a full disk) would be refused on every later load; the previous one stays."""
    path = tmp_path / "sensitivity.json"
    SensitivityTable("metric", 1.0, {"head": {4: 0.5, 8: 0.0}}).save(path)
    write_text = Path.write_text

    def disk_full(self: Path, text: str) -> int:
        write_text(self, text[: len(text) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space"):
        SensitivityTable("metric", 1.0, {"head": {4: 0.7, 8: 0.1}}).save(path)
    monkeypatch.undo()
    assert SensitivityTable.load(path).costs == {"head": {4: 0.5, 8: 0.0}}
    assert [p.name for p in tmp_path.iterdir()] == ["sensitivity.json"]


@pytest.mark.parametrize(
    "raw",
    [
        '{"method": "metric", "baseline": 1, "costs": {"head": [0.1, 0.2]}}',
        '{"method": "metric", "baseline": 1, "costs": [["head", 0.1]]}',
        '{"method": "metric", "baseline": 1, "costs": {"head": {"4": 0.1}}, "weights": ["head.weight"]}',
        '{"method": "metric", "baseline": 1, "costs": {"head": {"4": 0.1}}, "settings": []}',
        '{"method": "metric", "costs": {"head": {"4": 0.1}}}',
        '{"method": "metric", "baseline": 1, "costs": {"head": {"four": 0.1}}}',
        '{"method": "metric", "baseline": 1, "costs": {',
    ],
)
def test_a_malformed_table_is_named(raw: str, tmp_path: Path) -> None:
    """A table edited by hand, or another program's JSON: a list where an object belongs came through as a raw
    AttributeError."""
    from nncf_ext.errors import CheckpointError

    path = tmp_path / "sensitivity.json"
    path.write_text(raw)
    with pytest.raises(CheckpointError, match=f"cannot read the sensitivity table {path}"):
        SensitivityTable.load(path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bits": 1}, r"bits: expected a bit-width from 2 to 8, got 1"),  # was a ZeroDivisionError
        ({"bits": 0}, r"bits: .* got 0"),  # was all zeros
        ({"bits": 9}, r"bits: .* got 9"),
        ({"bits": True}, r"bits: .* got True"),
        (
            {"mode": "foo"},
            r"mode: expected one of \['symmetric', 'asymmetric'\], got 'foo'",
        ),  # was asymmetric
        ({"init": "foo"}, r"init: expected one of \['minmax', 'mse'\], got 'foo'"),  # was mse
        ({"per_channel": "no"}, r"per_channel: expected a boolean"),
    ],
)
def test_quantized_weight_refuses_an_unsupported_format(kwargs: dict, match: str) -> None:
    from nncf_ext.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        quantized_weight(torch.randn(4, 4), **{"bits": 4, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"candidate_bits": [1]}, r"candidate_bits\[0\]: expected a bit-width from 2 to 8, got 1"),
        ({"candidate_bits": [4, 9]}, r"candidate_bits\[1\]: .* got 9"),
        ({"candidate_bits": []}, r"candidate_bits: expected a list of bit-widths"),
        ({"candidate_bits": "48"}, r"candidate_bits: expected a list of bit-widths"),
        ({"mode": "foo"}, r"mode: .* got 'foo'"),
        ({"init": "foo"}, r"init: .* got 'foo'"),
        ({"modules": {}}, r"modules: no modules to measure"),  # a raw autograd error for the Hessian
        ({"modules": {"head": []}}, r"modules: module 'head' has no weights"),
    ],
)
@pytest.mark.parametrize("method", ["metric", "hessian"])
def test_sensitivity_refuses_bad_arguments_before_measuring(
    kwargs: dict, match: str, method: str, tmp_path: Path
) -> None:
    from nncf_ext.errors import ConfigError

    model, modules, x = setup()
    calls: list[int] = []

    def evaluate() -> float:
        calls.append(1)
        return 0.0

    def loss() -> torch.Tensor:
        calls.append(1)
        return model(x).pow(2).mean()

    args = {"modules": modules, "candidate_bits": BITS, "cache": tmp_path / "s.json", **kwargs}
    with pytest.raises(ConfigError, match=match):
        if method == "metric":
            measure_sensitivity(model, evaluate=evaluate, **args)
        else:
            hessian_sensitivity(model, loss_fn=loss, samples=2, **args)
    assert not calls and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("samples", [0, -1, True, 2.5])
def test_hessian_samples_must_be_a_positive_count(samples: object, tmp_path: Path) -> None:
    """``samples=0`` made every trace, and so every cost, 0.0; a table cached so is not reused either."""
    from nncf_ext.errors import ConfigError

    model, modules, x = setup()
    settings = {"samples": samples, "traces": "eval", "mode": "symmetric", "per_channel": True, "init": "mse"}
    costs = {m: dict.fromkeys(BITS, 0.0) for m in modules}
    weights = {m: [f"{w.name}:{list(w.shape)}" for w in ws] for m, ws in modules.items()}
    SensitivityTable("hessian", 0.0, costs, weights, settings).save(tmp_path / "h.json")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="samples: expected a number of samples >= 1"):
        hessian_sensitivity(
            model,
            modules,
            BITS,
            lambda: model(x).pow(2).mean(),
            samples=samples,  # type: ignore[arg-type]
            cache=tmp_path / "h.json",
        )
    with pytest.raises(ConfigError, match="samples: expected a number of samples >= 1"):
        hessian_traces(model, modules, lambda: model(x).pow(2).mean(), samples=samples)  # type: ignore[arg-type]


def test_a_failed_evaluation_is_recorded_and_ranked_most_sensitive() -> None:
    """NaN with a module quantized is a failed evaluation (the README: it rules that width out), recorded as
    such; ``order`` ranks it most sensitive, where a NaN sort key left the order arbitrary."""
    from nncf_ext.mqat.algo import allocation_costs

    model, modules, _ = setup()
    calls = iter(range(100))

    def evaluate() -> float:  # the baseline, then backbone, fpn and head at 2, 4 and 8 bits: fpn at 2 fails
        return float("nan") if next(calls) == 4 else 1.0

    table = measure_sensitivity(model, modules, BITS, evaluate)
    assert math.isnan(table.costs["fpn"][2]) and table.costs["fpn"][4] == 0.0
    assert table.order()[-1] == "fpn"
    assert table.order({"fpn": 4})[-1] != "fpn"
    assert allocation_costs(table.costs["fpn"])[2] == math.inf


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, "good"])
def test_a_baseline_that_is_not_a_finite_number_is_refused(value: object) -> None:
    from nncf_ext.errors import ModelError

    model, modules, _ = setup()
    with pytest.raises(ModelError, match=r"evaluate\(\) returned .* at full precision"):
        measure_sensitivity(model, modules, BITS, lambda: value)  # type: ignore[arg-type,return-value]


def test_an_evaluation_that_is_not_a_number_names_the_module_and_bits() -> None:
    from nncf_ext.errors import ModelError

    model, modules, _ = setup()
    results = iter([1.0, None])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ModelError, match=r"evaluate\(\) returned None with module 'backbone' at 2 bits"):
        measure_sensitivity(model, modules, BITS, lambda: next(results))  # type: ignore[arg-type,return-value]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # weights restored


def test_a_non_finite_hessian_cost_is_refused_naming_the_module() -> None:
    """A loss that is NaN gave NaN traces, stored as every cost."""
    from nncf_ext.errors import ModelError

    model, modules, x = setup()
    with pytest.raises(ModelError, match=r"Hessian sensitivity of module 'backbone' at 2 bits is nan"):
        hessian_sensitivity(model, modules, BITS, lambda: model(x).pow(2).mean() * float("nan"), samples=2)


def test_order_at_a_width_not_measured_is_named() -> None:
    from nncf_ext.errors import ConfigError

    table = SensitivityTable("metric", 1.0, {"head": {4: 0.5, 8: 0.0}, "fpn": {4: 0.1, 8: 0.0}})
    assert table.order({"head": 8}) == ["head", "fpn"]
    with pytest.raises(ConfigError, match="module 'head' was not measured at 2 bits"):
        table.order({"head": 2})
