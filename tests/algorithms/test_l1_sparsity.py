import pytest
import torch

import nncf_ext
from tests.conftest import TinyNet


def config(strength: object, **extra: object) -> dict:
    return {"compression": [{"algorithm": "l1_sparsity", "lambda": strength, **extra}]}


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_loss_term_gradient_equals_injected_gradient(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    a, b = TinyNet(), TinyNet()
    b.load_state_dict(a.state_dict())
    with torch.no_grad():  # exact zeros must get zero L1 gradient in both paths
        a.fc.weight[0, :3] = 0
        b.fc.weight[0, :3] = 0
    pa = nncf_ext.create_compression(
        a, config(1e-2, ignored_scope={"names": ["features.0.weight"]}), example_input
    )
    pb = nncf_ext.create_compression(
        b, config(1e-2, ignored_scope={"names": ["features.0.weight"]}), example_input
    )

    (a(example_input).sum() + pa.loss()).backward()
    b(example_input).sum().backward()
    plain = grads(b)
    pb.inject_gradients()
    ga, gb = grads(a), grads(b)
    assert ga.keys() == gb.keys()
    for name in ga:
        torch.testing.assert_close(ga[name], gb[name], rtol=0, atol=1e-7)
    # the regularizer really acted on the target weights and only there
    assert not torch.allclose(gb["fc.weight"], plain["fc.weight"])
    assert torch.equal(gb["features.0.weight"], plain["features.0.weight"])
    assert torch.equal(gb["fc.weight"][0, :3], plain["fc.weight"][0, :3])
    expected = 1e-2 * torch.sign(b.fc.weight.detach())
    torch.testing.assert_close(gb["fc.weight"] - plain["fc.weight"], expected)


def test_mean_reduction_and_schedule(tiny_net: TinyNet, example_input: torch.Tensor) -> None:
    schedule = {"type": "multistep", "steps": {"0": 1.0, "2": 0.0}}
    pipeline = nncf_ext.create_compression(tiny_net, config(schedule, reduction="mean"), example_input)
    weights = [tiny_net.features[0].weight, tiny_net.features[3].weight, tiny_net.fc.weight]
    expected = sum(w.abs().sum() for w in weights) / sum(w.numel() for w in weights)
    torch.testing.assert_close(pipeline.loss(), expected)
    pipeline.epoch_step(2)
    assert float(pipeline.loss()) == 0.0
    assert pipeline.summary() == {"l1_sparsity/lambda": 0.0}


def test_l1_drives_weights_to_zero(tiny_net: TinyNet, example_input: torch.Tensor) -> None:
    """With a strong L1 term and plain SGD, weights shrink in magnitude steadily."""
    pipeline = nncf_ext.create_compression(tiny_net, config(1.0), example_input)
    before = float(pipeline.loss())
    optimizer = torch.optim.SGD(tiny_net.parameters(), lr=1e-3)
    for _ in range(20):
        optimizer.zero_grad()
        pipeline.loss().backward()
        optimizer.step()
    assert float(pipeline.loss()) < 0.9 * before


def test_l1_loss_of_an_fp16_model_does_not_overflow() -> None:
    model = torch.nn.Linear(512, 512)
    with torch.no_grad():
        model.weight.fill_(0.5)  # sum |W| = 131072, above fp16's largest value (65504)
    model.half()
    config = {"compression": [{"algorithm": "l1_sparsity", "lambda": 1e-6}]}
    pipeline = nncf_ext.create_compression(model, config, torch.ones(1, 512).half())
    loss = pipeline.loss()
    assert loss is not None and torch.isfinite(loss)
    assert float(loss) == pytest.approx(1e-6 * 512 * 512 * 0.5, rel=1e-3)


def test_frozen_weights_get_no_l1_gradient(tiny_net: TinyNet, example_input: torch.Tensor) -> None:
    pipeline = nncf_ext.create_compression(tiny_net, config(1e-2), example_input)
    tiny_net.fc.weight.requires_grad_(False)
    tiny_net(example_input).sum().backward()
    pipeline.inject_gradients()
    assert tiny_net.fc.weight.grad is None
    assert tiny_net.features[0].weight.grad is not None


def test_the_loss_sums_every_entry(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    entries = [
        {"algorithm": "l1_sparsity", "lambda": 1e-2, "target_scope": {"types": ["conv2d"]}},
        {"algorithm": "l1_sparsity", "lambda": 1e-3, "target_scope": {"types": ["linear"]}},
    ]
    pipeline = nncf_ext.create_compression(model, {"compression": entries}, example_input)
    convs = model.features[0].weight.abs().sum() + model.features[3].weight.abs().sum()
    expected = 1e-2 * convs + 1e-3 * model.fc.weight.abs().sum()
    torch.testing.assert_close(pipeline.loss(), expected.detach())
