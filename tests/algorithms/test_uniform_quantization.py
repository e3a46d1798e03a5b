import pytest
import torch
from nncf.torch.quantization.layers import BaseQuantizer

import nncf_ext
from nncf_ext.errors import ConfigError
from nncf_ext.hooks import effective_weight, hooks_of_type
from nncf_ext.model import get_weight
from tests.conftest import TinyNet


def config(**options: object) -> dict:
    return {"compression": [{"algorithm": "uniform_quantization", **options}]}


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("mode", ["symmetric", "asymmetric"])
def test_five_bit_layer_has_at_most_32_values(
    per_channel: bool, mode: str, example_input: torch.Tensor
) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    options = {"weights": {"bits": 5, "per_channel": per_channel, "mode": mode, "init": "minmax"}}
    nncf_ext.create_compression(model, config(**options), example_input)
    for name, param in model.named_parameters():
        if name not in hooks_of_type(model, BaseQuantizer):
            continue
        q = effective_weight(model, name, param)
        groups = [q[c] for c in range(q.shape[0])] if per_channel else [q]
        counts = [g.unique().numel() for g in groups]
        assert max(counts) <= 32
        if name == "features.3.weight" and not per_channel:
            assert max(counts) >= 24, "a 5-bit grid over min..max of 576 weights uses most of its 32 levels"
    stats = nncf_ext.compression_statistic(model)
    assert all(layer.bits == 5 for layer in stats.layers)


def test_exactly_two_to_the_bits_levels(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    nncf_ext.create_compression(
        model, config(weights={"bits": 3, "per_channel": False, "init": "minmax"}), example_input
    )
    w = torch.linspace(-2, 2, 1001)
    quantizer = hooks_of_type(model, BaseQuantizer)["fc.weight"]
    quantizer.scale.data.fill_(1.0)
    assert quantizer(w).unique().numel() == 8  # not 7: no narrow range


def test_activations_are_quantized_and_ranges_train(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    nncf_ext.create_compression(model, config(weights={"bits": 8}, activations={"bits": 4}), example_input)
    seen: list[torch.Tensor] = []
    handle = model.fc.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    out = model(example_input)
    handle.remove()
    assert seen[0].unique().numel() <= 16
    out.pow(2).sum().backward()
    from nncf.torch.function_hook.wrapper import get_hook_storage

    scales = [p for n, p in get_hook_storage(model).named_parameters() if "scale" in n]
    assert scales and all(p.grad is not None for p in scales)


def test_start_epoch_delays_quantization(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    reference = model(example_input).detach()
    pipeline = nncf_ext.create_compression(model, config(weights={"bits": 2}, start_epoch=1), example_input)
    assert torch.equal(model(example_input), reference)
    pipeline.epoch_step(1)
    assert not torch.allclose(model(example_input), reference)


def test_round_trip(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    nncf_ext.create_compression(model, config(weights={"bits": 4}, activations={"bits": 8}), example_input)
    model.eval()
    fresh = nncf_ext.load_from_config(TinyNet(), nncf_ext.get_config(model))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(fresh(example_input), model(example_input))


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"weights": {"bits": 1}}, "compression[0].weights.bits"),
        ({"weights": {"bits": 9}}, "compression[0].weights.bits"),
        ({"weights": {"mode": "log"}}, "compression[0].weights.mode"),
        ({"activations": {"bitz": 8}}, "compression[0].activations.bitz"),
        ({"weights": {"init": "percentile"}}, "compression[0].weights.init"),
        ({"start_epoch": True}, "compression[0].start_epoch"),  # a bool is not the integer 1
        ({"weights": {"bits": 4.0}}, "compression[0].weights.bits"),
    ],
)
def test_bad_configs(options: dict, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        nncf_ext.load_config(config(**options))
    assert info.value.path == path


def test_lsq_gradient_scale_follows_the_sign_of_each_quantizer() -> None:
    from tests.mqat.models import ModularNet

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    grads = []
    for lsq in (False, True):
        torch.manual_seed(0)
        model = ModularNet()
        options = {"weights": {"bits": 4}, "activations": {"bits": 4}, "lsq_gradient_scale": lsq}
        (algo,) = nncf_ext.create_compression(model, config(**options), x).algorithms
        model(x).square().sum().backward()
        quantizers = {**algo.weight_quantizers, **algo.activation_quantizers}
        grads.append({k: next(p for p in q.parameters() if p.dtype.is_floating_point).grad
                      for k, q in quantizers.items()})  # fmt: skip
    signs = {op: q.signed for op, q in algo.activation_quantizers.items()}
    assert set(signs.values()) == {True, False}  # the image input is signed, the post-ReLU inputs are not
    inputs = {"backbone/0/conv2d/0": 3 * 8 * 8, "backbone/2/conv2d/0": 8 * 8 * 8, "fpn/0/conv2d/0": 8 * 8 * 8,
              "head/linear/0": 8}  # fmt: skip
    # NNCF's symmetric scale is Qp * s and gets the gradient of the range (levels - 1) * s: the factor that
    # gives s LSQ's gradient scale 1 / sqrt(N * Qp) is Qp * (levels - 1) / sqrt(N * Qp)
    for name, q in algo.weight_quantizers.items():
        n = get_weight(algo.model, name).numel() // q.scale.numel()
        assert torch.allclose(grads[1][name], grads[0][name] * 7 * 15 / (n * 7) ** 0.5, rtol=1e-5), name
    for op in algo.activation_quantizers:
        qp = 7 if signs[op] else 15
        expected = grads[0][op] * qp * 15 / (inputs[op] * qp) ** 0.5
        assert torch.allclose(grads[1][op], expected, rtol=1e-5), op


@pytest.mark.parametrize("signed", [True, False])
def test_lsq_step_size_moves_as_in_lsq_under_sgd(signed: bool) -> None:
    """One SGD step on NNCF's scale moves the step size s by -lr * g * dL/ds, g = 1 / sqrt(N * Qp), with
    dL/ds from LSQ's own straight-through formula (inputs inside the range: NNCF's gradient of a clipped
    input is (levels - 1) / Qp times LSQ's, see ``lsq_gradient_factor``)."""
    from nncf_ext.quantizers import make_quantizer, scale_range_gradients, set_range

    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    x = x if signed else x.relu()
    target = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    q = make_quantizer(4, "symmetric", (1,), signed=signed, is_weights=False)
    set_range(q, x.min() * 1.1, x.max() * 1.1)
    scale_range_gradients(q, x.numel())
    qn, qp = q.level_low, q.level_high
    s0 = q.scale.detach().clone() / qp
    (q(x) - target).square().sum().backward()
    lr = 1e-3
    with torch.no_grad():
        q.scale -= lr * q.scale.grad
    s = s0.clone().requires_grad_(True)
    v = torch.clamp(x / s, qn, qp)
    ((v.round() - v).detach() + v).mul(s).sub(target).square().sum().backward()
    assert s.grad is not None and float(s.grad.abs()) > 0
    expected = -lr * s.grad / (x.numel() * qp) ** 0.5
    assert torch.allclose(q.scale.detach() / qp - s0, expected, rtol=1e-4)


def test_lsq_with_fixed_ranges_runs(example_input: torch.Tensor) -> None:
    """Ranges without gradients get no LSQ hook (registering one on them raised at the first forward)."""
    model = TinyNet()
    options = {"weights": {"bits": 4}, "trainable_ranges": False, "lsq_gradient_scale": True}
    pipeline = nncf_ext.create_compression(model, config(**options), example_input)
    model(example_input).sum().backward()
    (algo,) = pipeline.algorithms
    assert all(not p.requires_grad for q in algo.weight_quantizers.values() for p in q.parameters())


class _MatmulEmbeddingNet(torch.nn.Module):
    """``W @ x`` (the weight on port 0) and an embedding (integer indices on port 0) beside a linear."""

    def __init__(self) -> None:
        super().__init__()
        self.W = torch.nn.Parameter(torch.randn(4, 8))
        self.emb = torch.nn.Embedding(10, 2)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.matmul(self.W, x).mean(2)) + self.emb(idx).sum(1)


def test_activation_quantizers_sit_on_the_float_input_of_each_op() -> None:
    from nncf.torch.function_hook.wrapper import register_pre_function_hook

    torch.manual_seed(0)
    model = _MatmulEmbeddingNet()
    inputs = (torch.randn(2, 8, 3), torch.randint(0, 10, (2, 5)))
    options = {"weights": {"bits": 8}, "activations": {"bits": 4}}
    (algo,) = nncf_ext.create_compression(model, config(**options), inputs).algorithms
    assert algo.activation_ports == {"/matmul/0": 1, "fc/linear/0": 0}  # none on the embedding's indices
    seen: dict[int, torch.Tensor] = {}

    class Record(torch.nn.Module):
        def __init__(self, port: int) -> None:
            super().__init__()
            self.port = port

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            seen[self.port] = t.detach()
            return t

    for port in (0, 1):  # after the quantizers: what the matmul computes with
        register_pre_function_hook(model, op_name="/matmul/0", port_id=port, hook=Record(port))
    model(*inputs)
    assert seen[0].unique().numel() == 32  # the weight on its own 8-bit grid, not on the 4-bit activation's
    assert seen[1].unique().numel() <= 16  # the activation x is quantized


def test_lsq_gradient_scale_survives_a_deepcopy_of_the_model_and_is_applied_once() -> None:
    import copy

    from tests.mqat.models import ModularNet

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = ModularNet()
    options = {"weights": {"bits": 4}, "activations": {"bits": 4}, "lsq_gradient_scale": True}
    (algo,) = nncf_ext.create_compression(model, config(**options), x).algorithms
    twin = copy.deepcopy(model)

    def range_grads(m: torch.nn.Module, passes: int) -> dict[str, torch.Tensor]:
        m.zero_grad()
        for _ in range(passes):  # forwards before one backward place no second hook
            out = m(x)
        out.square().sum().backward()
        return {
            n: p.grad.clone() for n, p in m.named_parameters() if "__nncf_hooks" in n and p.grad is not None
        }

    expected = range_grads(model, 1)
    assert len(expected) == len(algo.weight_quantizers) + len(algo.activation_quantizers)
    for name, grad in range_grads(twin, 3).items():
        assert torch.allclose(grad, expected[name], rtol=1e-5), name
    for name, grad in range_grads(model, 2).items():
        assert torch.allclose(grad, expected[name], rtol=1e-5), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_ranges_start_on_a_model_cast_after_the_compression_was_made(
    dtype: torch.dtype, example_input: torch.Tensor
) -> None:
    """Lightning casts (bf16-true) and moves the model after the callback made the compression: the stored
    example input follows the model when activation ranges are measured at ``start_epoch``."""
    torch.manual_seed(0)
    model = TinyNet()
    config = {"compression": [{"algorithm": "uniform_quantization", "activations": {}, "start_epoch": 1}]}
    pipeline = nncf_ext.create_compression(model, config, example_input)
    model.to(dtype)
    pipeline.epoch_step(1)
    assert all(q.is_enabled_quantization() for q in hooks_of_type(model, BaseQuantizer).values())
    assert model(example_input.to(dtype)).dtype == dtype


def test_malformed_initialized_state_is_refused(example_input: torch.Tensor) -> None:
    from nncf_ext.errors import CheckpointError

    pipeline = nncf_ext.create_compression(
        TinyNet(), {"compression": [{"algorithm": "uniform_quantization", "start_epoch": 2}]}, example_input
    )
    state = pipeline.state_dict()
    bad = {**state, "algorithms": [{**state["algorithms"][0], "initialized": "false"}]}
    with pytest.raises(CheckpointError, match="'initialized' must be true or false"):
        pipeline.load_state_dict(bad)  # "false" used to switch on quantizers with uninitialised ranges


def test_per_scope_bits_rules_are_applied_types_then_patterns_then_names(example_input: torch.Tensor) -> None:
    """A name rule beats a pattern rule, which beats a type rule, whatever order the config lists them in."""
    rules = {"names": {"fc.weight": 8}, "patterns": {"features.3.*": 6}, "types": {"linear": 3, "conv2d": 4}}
    model = TinyNet()
    nncf_ext.create_compression(model, config(weights={"bits": 5, "bits_per_scope": rules}), example_input)
    bits = {layer.name: layer.bits for layer in nncf_ext.compression_statistic(model).layers}
    assert bits == {"features.0.weight": 4, "features.3.weight": 6, "fc.weight": 8}


def test_fixed_ranges_stay_fixed_after_a_resume(example_input: torch.Tensor) -> None:
    options = {"weights": {"bits": 4}, "activations": {"bits": 8}, "trainable_ranges": False}
    source = TinyNet()
    state = nncf_ext.create_compression(source, config(**options), example_input).state_dict()
    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, config(**options), example_input)
    pipeline.load_state_dict(state)
    (algo,) = pipeline.algorithms
    quantizers = [*algo.weight_quantizers.values(), *algo.activation_quantizers.values()]
    assert quantizers and all(not p.requires_grad for q in quantizers for p in q.parameters())


def test_an_all_zero_example_input_is_refused_for_activation_quantization() -> None:
    """Activation ranges start from the example input: zeros gave the first layer's input quantizer a range of
    1e-8, which erased every input, and training stayed at chance (the CLI's tasks passed zeros)."""
    from nncf.torch.function_hook.wrapper import is_wrapped

    from nncf_ext.errors import ModelError

    model = TinyNet()
    config = {"compression": {"algorithm": "uniform_quantization", "activations": {"bits": 8}}}
    with pytest.raises(
        ModelError, match=r"compression\[0\]\.activations: .* input of features/0/conv2d/0 all zeros"
    ):
        nncf_ext.create_compression(model, config, torch.zeros(2, 3, 12, 12))
    assert not is_wrapped(model)
    weights_only = {"compression": {"algorithm": "uniform_quantization", "weights": {"bits": 8}}}
    nncf_ext.create_compression(TinyNet(), weights_only, torch.zeros(2, 3, 12, 12))  # no activation ranges


def test_a_constant_non_zero_activation_keeps_its_range() -> None:
    """A scalar conditioning input (batch 1) is one value, but not zero: its range is usable."""
    from torch import nn

    class Conditioned(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(1, 8)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return self.embed(t)

    config = {"compression": {"algorithm": "uniform_quantization", "activations": {"bits": 8}}}
    model = Conditioned()
    nncf_ext.create_compression(model, config, torch.full((1, 1), 0.25))
    (quantizer,) = [q for n, q in model.named_modules() if isinstance(q, BaseQuantizer) and "pre_hooks" in n]
    assert float(quantizer.scale) == pytest.approx(0.25)


def test_a_non_finite_example_input_is_named_as_such() -> None:
    """NaN was reported as "all zeros", and a constant inf gave an infinite range."""
    from nncf_ext.errors import ModelError

    config = {"compression": {"algorithm": "uniform_quantization", "activations": {"bits": 8}}}
    for value in (float("nan"), float("inf")):
        example = torch.randn(2, 3, 12, 12)
        example[0, 0, 0, 0] = value
        with pytest.raises(ModelError, match=r"input of features/0/conv2d/0 the range .*finite inputs"):
            nncf_ext.create_compression(TinyNet(), config, example)
