import copy

import pytest
import torch

import nncf_ext
from nncf_ext.algorithms.threshold_pruning import ThresholdPruningMask, threshold_mask
from nncf_ext.hooks import effective_weight, hooks_of_type
from tests.conftest import TinyNet, pruning_config


def test_absolute_mask_on_hand_made_tensor() -> None:
    w = torch.tensor([[0.0005, -0.002, 0.01], [-0.0099, 0.05, -0.051]])
    assert threshold_mask(w, 0.001, "absolute").tolist() == [[False, True, True], [True, True, True]]
    assert threshold_mask(w, 0.01, "absolute").tolist() == [[False, False, True], [False, True, True]]
    assert threshold_mask(w, 0.0, "absolute").all()


def test_std_mask_on_hand_made_tensor() -> None:
    w = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 0.5])
    std = float(w.std())  # unbiased, 1.4142...
    assert threshold_mask(w, 1.0, "std").tolist() == [bool(abs(v) >= std) for v in w.tolist()]
    assert threshold_mask(w, 1.0, "std").tolist() == [True, False, False, False, True, False]
    assert threshold_mask(w, 0.5, "std").tolist() == [True, True, False, True, True, False]


def masks(model: torch.nn.Module) -> dict[str, ThresholdPruningMask]:
    return hooks_of_type(model, ThresholdPruningMask)  # type: ignore[return-value]


def test_pipeline_masks_follow_the_schedule(tiny_net: TinyNet, example_input: torch.Tensor) -> None:
    weights = {n: p.detach().clone() for n, p in tiny_net.named_parameters() if n.endswith("weight")}
    schedule = {"type": "multistep", "steps": {"0": 0.05, "2": 0.15}}
    pipeline = nncf_ext.create_compression(tiny_net, pruning_config(schedule), example_input)
    found = masks(tiny_net)
    assert set(found) == {"features.0.weight", "features.3.weight", "fc.weight"}
    for name, hook in found.items():
        assert torch.equal(hook.mask, weights[name].abs() >= 0.05)
    pipeline.epoch_step(1)
    for name, hook in found.items():
        assert torch.equal(hook.mask, weights[name].abs() >= 0.05)
    pipeline.epoch_step(2)
    for name, hook in found.items():
        assert torch.equal(hook.mask, weights[name].abs() >= 0.15)
        assert torch.equal(effective_weight(tiny_net, name, weights[name]) == 0, weights[name].abs() < 0.15)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-3),
        lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=0.1),
        lambda p: torch.optim.AdamW(p, lr=0.05, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam-wd", "adamw"],
)
def test_pruned_weights_stay_zero_through_optimizer_steps(
    make_optimizer, example_input: torch.Tensor
) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = TinyNet()
    schedule = {"type": "multistep", "steps": {"1": 0.1}}
    pipeline = nncf_ext.create_compression(model, pruning_config(schedule), example_input)
    optimizer = make_optimizer(model.parameters())

    def train(steps: int, call_step: bool) -> None:
        for _ in range(steps):
            loss = model(example_input).pow(2).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if call_step:
                pipeline.step()

    train(5, True)  # optimizer state (momentum, Adam moments) builds up before anything is pruned
    assert all(h.mask.all() for h in masks(model).values())
    pipeline.epoch_step(1)
    pruned = {n: ~h.mask.clone() for n, h in masks(model).items()}
    assert sum(int(m.sum()) for m in pruned.values()) > 50

    loss = model(example_input).pow(2).sum()
    optimizer.zero_grad()
    loss.backward()
    params = dict(model.named_parameters())
    for name, mask in pruned.items():
        assert params[name].grad is not None
        assert torch.all(params[name].grad[mask] == 0), f"{name}: pruned weights receive gradient"

    train(10, False)  # even without pipeline.step(), the model computes with exact zeros
    for name, mask in pruned.items():
        assert torch.all(effective_weight(model, name, params[name])[mask] == 0)
        assert torch.equal(~masks(model)[name].mask, mask)
    train(10, True)  # and with it the latent weights are zero too
    for name, mask in pruned.items():
        assert torch.all(params[name][mask] == 0)


def test_without_regrowth_masks_never_recover(tiny_net: TinyNet, example_input: torch.Tensor) -> None:
    schedule = {"type": "multistep", "steps": {"0": 0.15, "1": 0.01}}
    pipeline = nncf_ext.create_compression(tiny_net, pruning_config(schedule), example_input)
    before = {n: h.mask.clone() for n, h in masks(tiny_net).items()}
    pipeline.epoch_step(1)
    for name, hook in masks(tiny_net).items():
        assert torch.equal(hook.mask, before[name])


def test_regrowth_restores_weights_that_grew_back(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    schedule = {"type": "multistep", "steps": {"0": 0.15, "1": 0.01}}
    pipeline = nncf_ext.create_compression(model, pruning_config(schedule, regrowth=True), example_input)
    hook = masks(model)["fc.weight"]
    pruned = ~hook.mask.clone()
    assert pruned.any()
    loss = model(example_input).sum()
    loss.backward()
    assert (model.fc.weight.grad[pruned] != 0).any(), "regrowth needs straight-through gradients"
    pipeline.epoch_step(1)
    assert torch.equal(hook.mask, model.fc.weight.detach().abs() >= 0.01)
    assert hook.mask[pruned].any()


def test_scopes_select_weights(tiny_net: TinyNet, example_input: torch.Tensor) -> None:
    config = pruning_config(0.05, target_scope={"types": ["Conv2d"]}, ignored_scope={"names": ["features.0"]})
    nncf_ext.create_compression(tiny_net, config, example_input)
    assert set(masks(tiny_net)) == {"features.3.weight"}


def test_second_pipeline_on_the_same_weights_is_refused(
    tiny_net: TinyNet, example_input: torch.Tensor
) -> None:
    nncf_ext.create_compression(tiny_net, pruning_config(0.05), example_input)
    with pytest.raises(nncf_ext.ModelError, match="already carry"):
        nncf_ext.create_compression(tiny_net, pruning_config(0.1), example_input)
    assert len(masks(tiny_net)) == 3


def test_std_criterion_keeps_a_one_element_weight() -> None:
    assert threshold_mask(torch.tensor([[0.9]]), 0.5, "std").all()
    assert not threshold_mask(torch.tensor([[0.9]]), 1.0, "absolute").any()


def test_repeating_an_epoch_prunes_no_more(example_input: torch.Tensor) -> None:
    """With a non-zero mean, pruning raises the std of the (zero-filled) weights: pruning again at the same
    threshold would take more, so a repeated epoch (a resume, a callback after create_compression) keeps
    the epoch's masks."""
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.normal_(0.2, 0.1)
    entry = {"algorithm": "threshold_pruning", "criterion": "std", "threshold": 1.5,
             "target_scope": {"names": ["fc.weight"]}}  # fmt: skip
    pipeline = nncf_ext.create_compression(model, {"compression": [entry]}, example_input)
    pruned = pipeline.summary()["threshold_pruning/pruned_fraction"]
    assert 0 < pruned < 1
    for _ in range(3):
        pipeline.epoch_step(0)
        assert pipeline.summary()["threshold_pruning/pruned_fraction"] == pruned


@pytest.mark.parametrize("regrowth", [False, True])
def test_a_falling_threshold_regrows_weights_only_with_regrowth(
    tiny_net: TinyNet, example_input: torch.Tensor, regrowth: bool
) -> None:
    schedule = {"type": "multistep", "steps": {"0": 0.1, "1": 0.0}}
    pipeline = nncf_ext.create_compression(
        tiny_net, pruning_config(schedule, regrowth=regrowth), example_input
    )
    pruned = sum(int((~h.mask).sum()) for h in masks(tiny_net).values())
    assert pruned > 100
    pipeline.epoch_step(1)
    after = sum(int((~h.mask).sum()) for h in masks(tiny_net).values())
    assert after == (0 if regrowth else pruned)


def test_a_weight_exactly_at_the_threshold_is_kept() -> None:
    w = torch.tensor([-2.0, -2.0, 2.0, 2.0, 0.0])  # mean 0, unbiased std exactly 2
    assert float(w.std()) == 2.0
    assert threshold_mask(w, 1.0, "std").tolist() == [True, True, True, True, False]
    assert threshold_mask(torch.tensor([0.5, 0.25]), 0.5, "absolute").tolist() == [True, False]


def test_channel_std_mask_on_hand_made_tensor() -> None:
    """Each row against its own std: the small row keeps its largest entry, where one threshold for the
    layer (std) prunes it whole."""
    w = torch.tensor([[0.01, -0.02, 0.03, 0.0], [1.0, -2.0, 3.0, 0.0]])  # row stds 0.0208 and 2.0817
    assert threshold_mask(w, 1.0, "channel_std").tolist() == [[False, False, True, False]] * 2
    assert threshold_mask(w, 0.5, "channel_std").tolist() == [[False, True, True, False]] * 2
    assert threshold_mask(w, 1.0, "std").tolist() == [
        [False, False, False, False],
        [False, True, True, False],
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_channel_std_is_the_std_criterion_per_output_filter(dtype: torch.dtype) -> None:
    """In every dtype (both compare in float32: a bfloat16 threshold would round away from the float32 one)."""
    torch.manual_seed(0)
    w = torch.randn(6, 32, 16, 16) * torch.logspace(-3, 2, 6).view(6, 1, 1, 1)  # filters 10^5 apart in scale
    w = w.to(dtype)
    mask = threshold_mask(w, 0.8, "channel_std")
    for c in range(w.shape[0]):
        assert torch.equal(mask[c], threshold_mask(w[c], 0.8, "std"))
    assert (mask.flatten(1).float().mean(1) > 0.2).all()  # every filter keeps its largest weights
    assert not threshold_mask(w, 0.8, "std")[:3].any()  # the layer's std prunes the small filters whole


def test_channel_std_keeps_channels_of_one_element() -> None:
    assert threshold_mask(torch.tensor([[0.1], [-5.0], [0.3]]), 10.0, "channel_std").all()
    assert threshold_mask(torch.tensor(0.3), 10.0, "channel_std").all()


def test_channel_std_takes_a_one_dimensional_weight_as_one_channel() -> None:
    w = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0, 0.5])
    assert torch.equal(threshold_mask(w, 1.0, "channel_std"), threshold_mask(w, 1.0, "std"))
    assert threshold_mask(w, 1.0, "channel_std").tolist() == [True, False, False, False, True, False]


@pytest.mark.parametrize("criterion", ["absolute", "std", "channel_std"])
@pytest.mark.parametrize("shape", [(0,), (0, 4), (4, 0), (0, 3, 3, 3)])
def test_empty_weights_give_empty_masks(criterion: str, shape: tuple[int, ...]) -> None:
    mask = threshold_mask(torch.zeros(shape), 0.5, criterion)
    assert mask.shape == shape and mask.dtype == torch.bool


@pytest.mark.parametrize("criterion", ["std", "channel_std"])
def test_zeros_are_pruned_at_any_positive_threshold_even_with_no_spread(criterion: str) -> None:
    w = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # std 0: |0| >= q * 0 would keep them
    assert not threshold_mask(w, 0.5, criterion).any()
    assert threshold_mask(w, 0.0, criterion).all()  # threshold 0 prunes nothing
    rows = torch.tensor([[0.0, 0.0, 0.0], [1.0, -2.0, 0.5]])
    assert threshold_mask(rows, 0.1, "channel_std").tolist() == [[False] * 3, [True] * 3]
    constant = torch.full((2, 3), 0.7)  # std 0, nothing is below the threshold
    assert threshold_mask(constant, 0.5, criterion).all()


def test_channel_std_in_a_pipeline_prunes_every_row_of_a_scaled_layer(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(4, 8) * torch.tensor([[1e-4], [1e-3], [1e-2], [1.0]]))
    pruned_rows = {}
    for criterion in ("std", "channel_std"):
        net = copy.deepcopy(model)
        config = pruning_config(0.5, criterion=criterion, target_scope={"names": ["fc.weight"]})
        assert nncf_ext.load_config(config).to_dict()["compression"][0]["criterion"] == criterion
        nncf_ext.create_compression(net, config, example_input)
        (mask,) = masks(net).values()
        kept = mask.mask.sum(1)
        pruned_rows[criterion] = int((kept == 0).sum())
        assert torch.equal(mask.mask, threshold_mask(model.fc.weight.detach(), 0.5, criterion))
    assert pruned_rows == {"std": 3, "channel_std": 0}
