from pathlib import Path

import pytest
import torch

import nncf_ext
from nncf_ext.algorithms.kmeans_quantization import KMeansQuantizer, kmeans_1d
from nncf_ext.algorithms.kmeans_quantization.atoms import make_atoms
from nncf_ext.algorithms.kmeans_quantization.init import INITIALIZERS
from nncf_ext.algorithms.kmeans_quantization.kmeans import nearest_centroid
from nncf_ext.errors import ConfigError, ModelError
from nncf_ext.hooks import effective_weight, hooks_of_type
from tests.conftest import TinyNet


def kmeans_config(**options: object) -> dict:
    return {"compression": [{"algorithm": "kmeans_quantization", **options}]}


def quantizers(model: torch.nn.Module) -> dict[str, KMeansQuantizer]:
    return hooks_of_type(model, KMeansQuantizer)  # type: ignore[return-value]


# -- 1-D k-means -----------------------------------------------------------------------------------------


def brute_force_assignment(w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return (w.double()[:, None] - centroids.double()[None]).abs().argmin(1)


@pytest.mark.parametrize("init", sorted(INITIALIZERS))
def test_kmeans_is_a_lloyd_fixed_point(init: str) -> None:
    w = torch.randn(3000, generator=torch.Generator().manual_seed(0))
    result = kmeans_1d(w, 8, init, max_iter=500)
    index = result.index.long()
    assert torch.equal(index, brute_force_assignment(w, result.centroids))
    means = torch.stack([w[index == j].mean() for j in range(8)])
    torch.testing.assert_close(means, result.centroids, atol=1e-5, rtol=0)


def test_histogram_atoms_match_exact_kmeans() -> None:
    """Large tensors go through histogram atoms; the result must agree with the exact path."""
    w = torch.randn(300_000, generator=torch.Generator().manual_seed(1))
    exact = kmeans_1d(w, 16, "density", atoms=make_atoms(w, exact_limit=10**9))
    approx = kmeans_1d(w, 16, "density")
    torch.testing.assert_close(approx.centroids, exact.centroids, atol=2e-3, rtol=0)
    assert float((approx.index != exact.index).float().mean()) < 1e-3


def test_initialisations_on_known_data() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0])
    atoms = make_atoms(values)
    assert INITIALIZERS["linear"](atoms, 3, g).tolist() == [0.0, 50.0, 100.0]
    assert INITIALIZERS["density"](atoms, 2, g).tolist() == [2.0, 7.0]  # CDF levels 2.5 / 10 and 7.5 / 10
    random = INITIALIZERS["random"](atoms, 4, g)
    assert set(random.tolist()) <= set(values.tolist()) and random.unique().numel() == 4
    groups = torch.cat([torch.full((50,), -5.0), torch.full((50,), 0.0), torch.full((50,), 9.0)])
    seeded = INITIALIZERS["kmeans++"](make_atoms(groups), 3, g)
    assert seeded.tolist() == [-5.0, 0.0, 9.0]  # D^2 sampling never picks an already covered value


def test_more_clusters_than_distinct_values() -> None:
    w = torch.tensor([0.5, -1.0, 0.5, 2.0, -1.0])
    for init in INITIALIZERS:
        result = kmeans_1d(w, 16, init)
        assert torch.isfinite(result.centroids).all()
        assert torch.equal(result.centroids[result.index.long()], w), init


# -- the algorithm ---------------------------------------------------------------------------------------


def test_codebook_gradient_is_the_per_cluster_sum_and_mean(example_input: torch.Tensor) -> None:
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)
        model = TinyNet()
        nncf_ext.create_compression(
            model,
            kmeans_config(bits=3, gradient_aggregation=reduction, preserve_sparsity=False),
            example_input,
        )
        hook = quantizers(model)["fc.weight"]
        # the same computation with the quantized weight as a plain leaf tensor
        plain = TinyNet()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("__nncf")})
        params = dict(plain.named_parameters())
        for name, h in quantizers(model).items():
            params[name].data.copy_(h.effective_codebook().detach()[h.index.long()])
        model(example_input).pow(2).sum().backward()
        plain(example_input).pow(2).sum().backward()
        index = hook.index.long().reshape(-1)
        grads = plain.fc.weight.grad.reshape(-1)
        expected = torch.zeros(hook.k).index_add_(0, index, grads)
        if reduction == "mean":
            expected = expected / torch.bincount(index, minlength=hook.k).clamp(min=1)
        torch.testing.assert_close(hook.codebook.grad, expected, atol=1e-6, rtol=1e-5)
        assert model.fc.weight.grad is None  # frozen assignment: latent weights are not trained


def train(
    model: torch.nn.Module, pipeline: nncf_ext.CompressionPipeline, x: torch.Tensor, steps: int = 10
) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
        pipeline.step()


def test_after_training_every_weight_is_a_centroid_and_pruned_zeros_survive(
    example_input: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    config = {
        "compression": [
            {"algorithm": "threshold_pruning", "threshold": 0.1},
            {"algorithm": "kmeans_quantization", "bits": 4, "bits_per_scope": {"types": {"linear": 2}}},
        ]
    }
    pipeline = nncf_ext.create_compression(model, config, example_input)
    pruned = {
        n: effective_weight(model, n, p) == 0 for n, p in model.named_parameters() if n in quantizers(model)
    }
    assert all(m.any() for m in pruned.values())
    before = {n: h.codebook.detach().clone() for n, h in quantizers(model).items()}
    train(model, pipeline, example_input)
    for name, hook in quantizers(model).items():
        assert not torch.equal(hook.codebook.detach(), before[name]), "centroids must train"
        weight = effective_weight(model, name, dict(model.named_parameters())[name])
        centroids = hook.effective_codebook().detach()
        assert torch.isin(weight, centroids).all()
        assert centroids.numel() == {"fc.weight": 4}.get(name, 16)
        assert torch.all(weight[pruned[name]] == 0)
        assert hook.effective_codebook()[0] == 0


def test_reassign_policy_moves_indices_with_latent_weights(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    config = kmeans_config(bits=3, assignment="reassign", reassign_interval=1, preserve_sparsity=False)
    pipeline = nncf_ext.create_compression(model, config, example_input)
    hook = quantizers(model)["fc.weight"]
    model(example_input).sum().backward()
    assert model.fc.weight.grad is not None and model.fc.weight.grad.abs().sum() > 0  # straight-through
    with torch.no_grad():
        model.fc.weight.neg_()
    pipeline.step()
    centroids = hook.effective_codebook().detach()
    expected = (model.fc.weight.detach().reshape(-1, 1) - centroids[None]).abs().argmin(1)
    assert torch.equal(hook.index.long().reshape(-1), expected)


def test_start_epoch_and_all_zero_layer(example_input: torch.Tensor) -> None:
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.zero_()
    pipeline = nncf_ext.create_compression(model, kmeans_config(bits=2, start_epoch=2), example_input)
    assert not any(bool(h.active) for h in quantizers(model).values())
    pipeline.epoch_step(2)
    hook = quantizers(model)["fc.weight"]
    assert bool(hook.active) and torch.all(effective_weight(model, "fc.weight", model.fc.weight) == 0)
    out = model(example_input)
    assert torch.isfinite(out).all()


def test_empty_clusters_train_without_nans(example_input: torch.Tensor) -> None:
    model = TinyNet()
    with torch.no_grad():
        model.fc.weight.copy_(
            torch.tensor([0.5, -0.5]).repeat(16).reshape(4, 8)
        )  # 2 values, 255 empty clusters
    pipeline = nncf_ext.create_compression(
        model, kmeans_config(bits=8, preserve_sparsity=False), example_input
    )
    train(model, pipeline, example_input, steps=5)
    assert all(torch.isfinite(h.codebook).all() for h in quantizers(model).values())


def test_nan_codebook_is_a_clear_error(example_input: torch.Tensor) -> None:
    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, kmeans_config(bits=4), example_input)
    with torch.no_grad():
        quantizers(model)["fc.weight"].codebook[3] = float("nan")
    with pytest.raises(ModelError, match=r"codebook of 'fc\.weight'"):
        pipeline.step()


def test_round_trip_through_get_config(example_input: torch.Tensor) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, kmeans_config(bits=5), example_input)
    train(model, pipeline, example_input, steps=3)
    model.eval()
    fresh = nncf_ext.load_from_config(TinyNet(), nncf_ext.get_config(model))
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(fresh(example_input), model(example_input))


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"bits": 0}, "compression[0].bits"),
        ({"bits": 9}, "compression[0].bits"),
        ({"bits": 1}, "compression[0].bits"),  # a zero centroid plus nothing
        ({"init": "kmeans"}, "compression[0].init"),
        ({"bits_per_scope": {"types": {"linear": 12}}}, "compression[0].bits_per_scope.types.linear"),
        ({"bits_per_scope": {"kinds": {}}}, "compression[0].bits_per_scope.kinds"),
        ({"reassign_interval": 5}, "compression[0].reassign_interval"),
        ({"bits_per_scope": {"types": {"linear": 1}}}, "compression[0].bits"),  # a 1-bit rule, sparse
    ],
)
def test_bad_configs(options: dict, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        nncf_ext.load_config(kmeans_config(**options))
    assert info.value.path == path


def test_unmatched_bits_rule_and_unfinished_pruning(example_input: torch.Tensor) -> None:
    with pytest.raises(ConfigError, match="matches no weight"):
        nncf_ext.create_compression(
            TinyNet(), kmeans_config(bits_per_scope={"names": {"nope": 4}}), example_input
        )
    config = {
        "compression": [
            {
                "algorithm": "threshold_pruning",
                "threshold": {"type": "multistep", "steps": {"0": 0.1, "5": 0.2}},
            },
            {"algorithm": "kmeans_quantization", "start_epoch": 3},
        ]
    }
    with pytest.raises(ConfigError, match="until epoch 5") as info:
        nncf_ext.load_config(config)
    assert info.value.path == "compression[1].start_epoch"
    for start, refused in ((4, True), (5, False)):  # the threshold's last change is at epoch 5
        config["compression"][1]["start_epoch"] = start
        if refused:
            with pytest.raises(ConfigError, match="until epoch 5"):
                nncf_ext.load_config(config)
        else:
            nncf_ext.load_config(config)
    iterative = {"type": "iterative", "initial": 0.1, "target": 0.3, "cycles": 3, "fine_tune_epochs": 2}
    config["compression"][0]["threshold"] = iterative  # changes at epochs 2 and 4
    config["compression"][1]["start_epoch"] = 4
    nncf_ext.load_config(config)
    config["compression"][1]["start_epoch"] = 3
    with pytest.raises(ConfigError, match="until epoch 4"):
        nncf_ext.load_config(config)


def test_kmeans_of_float64_values_assigns_every_value_to_its_nearest_centroid() -> None:
    for values in (torch.tensor([0.1, 0.2, 0.3, 0.7], dtype=torch.float64), torch.randn(1000).double()):
        result = kmeans_1d(values, 2)
        nearest = (values.float()[:, None] - result.centroids[None]).abs().argmin(1)
        assert torch.equal(result.index.long(), nearest)


def test_histogram_atoms_of_a_narrow_spread_far_from_zero() -> None:
    torch.manual_seed(0)
    for offset in (1.0, -1.0):
        weights = offset + 1e-5 * torch.randn(300_000)  # above the exact-atom limit: histogram atoms
        result = kmeans_1d(weights, 4)
        assert result.index.min() >= 0 and result.index.max() < 4
        error = (result.centroids[result.index.long()] - weights).abs().max()
        assert error < 1e-4  # the scale of the spread, not of the offset


def test_an_empty_layer_is_clustered_without_sparsity() -> None:
    class WithEmpty(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.empty = torch.nn.Linear(4, 3), torch.nn.Linear(4, 0)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.cat([self.a(x), self.empty(x)], 1)

    entry = {"algorithm": "kmeans_quantization", "bits": 2, "preserve_sparsity": False}
    model = WithEmpty()
    pipeline = nncf_ext.create_compression(model, {"compression": [entry]}, torch.randn(2, 4))
    assert model(torch.randn(2, 4)).shape == (2, 3)
    assert "empty.weight" in str(pipeline.statistics())


@pytest.mark.parametrize("seed", [-1, 2**63])
def test_a_kmeans_seed_out_of_range_is_a_config_error(seed: int) -> None:
    with pytest.raises(ConfigError) as info:
        nncf_ext.load_config({"compression": [{"algorithm": "kmeans_quantization", "seed": seed}]})
    assert info.value.path == "compression[0].seed"


def test_reassign_right_after_clustering_changes_nothing_and_never_prunes(
    example_input: torch.Tensor,
) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    entry = kmeans_config(bits=2, assignment="reassign", preserve_sparsity=True)
    pipeline = nncf_ext.create_compression(model, entry, example_input)
    before = {
        n: effective_weight(model, n, p).clone()
        for n, p in model.named_parameters()
        if n in quantizers(model)
    }
    assert all(bool((w != 0).all()) for w in before.values())
    pipeline.epoch_step(1)  # reassigns, with no training in between
    for name, param in model.named_parameters():
        if name in before:
            assert torch.equal(effective_weight(model, name, param), before[name]), name


def test_centroid_gradients_of_a_bfloat16_model_are_summed_in_float32() -> None:
    """Lightning's bf16-true casts the model after the compression was made: the codebook is bf16 too."""
    torch.manual_seed(0)
    model = torch.nn.Linear(256, 64)
    x = torch.randn(8, 256)
    nncf_ext.create_compression(model, kmeans_config(bits=2, preserve_sparsity=False), x)
    model.to(torch.bfloat16)
    hook = quantizers(model)["weight"]
    model(x.bfloat16()).float().pow(2).sum().backward()
    # the exact per-cluster sum of the bf16 weight gradients (about 4,000 per cluster)
    plain = hook.codebook.detach()[hook.index.long()].clone().requires_grad_(True)
    torch.nn.functional.linear(x.bfloat16(), plain, model.bias).float().pow(2).sum().backward()
    assert plain.grad is not None and hook.codebook.grad is not None
    index = hook.index.long().reshape(-1)
    expected = torch.zeros(hook.k, dtype=torch.float64).index_add_(0, index, plain.grad.double().reshape(-1))
    error = ((hook.codebook.grad.double() - expected).abs() / expected.abs()).max()
    assert error < 0.01  # summed in bf16 it was 10-35% off


def test_reassign_keeps_the_zeros_of_a_pruned_checkpoint(example_input: torch.Tensor) -> None:
    """With no pruning hook in front, zeroed weights get the straight-through gradient and move off zero:
    sparsity-preserving reassignment still keeps them at the zero centroid, as TF-MOT does."""
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():
        for p in (model.features[0].weight, model.fc.weight):
            p[p.abs() < p.abs().median()] = 0.0
    config = kmeans_config(bits=3, assignment="reassign", reassign_interval=1, preserve_sparsity=True)
    pipeline = nncf_ext.create_compression(model, config, example_input)
    zeros = {n: int((effective_weight(model, n, p) == 0).sum()) for n, p in model.named_parameters()}
    assert zeros["fc.weight"] >= 15
    train(model, pipeline, example_input, steps=10)
    assert model.fc.weight.detach().eq(0).sum() < zeros["fc.weight"]  # the latent zeros did move
    after = {n: int((effective_weight(model, n, p) == 0).sum()) for n, p in model.named_parameters()}
    assert (
        after["fc.weight"] == zeros["fc.weight"] and after["features.0.weight"] == zeros["features.0.weight"]
    )


def test_a_repeated_epoch_step_does_not_reassign(example_input: torch.Tensor) -> None:
    """Resuming into the same epoch keeps the indices the checkpoint saved."""
    torch.manual_seed(0)
    model = TinyNet()
    pipeline = nncf_ext.create_compression(
        model, kmeans_config(bits=3, assignment="reassign", preserve_sparsity=False), example_input
    )
    pipeline.epoch_step(1)
    train(model, pipeline, example_input, steps=5)
    index = {n: h.index.clone() for n, h in quantizers(model).items()}
    pipeline.epoch_step(1)
    assert all(torch.equal(h.index, index[n]) for n, h in quantizers(model).items())
    pipeline.epoch_step(2)
    assert any(not torch.equal(h.index, index[n]) for n, h in quantizers(model).items())


def test_histogram_atoms_are_exact_and_sorted() -> None:
    torch.manual_seed(0)
    weights = 1 + 1e-4 * torch.randn(300_000)  # float32 bin sums drifted by ~150 bin widths here
    atoms = make_atoms(weights)
    assert bool((atoms.values[1:] > atoms.values[:-1]).all())
    result = kmeans_1d(weights, 16)
    distance = (weights.double()[:, None] - result.centroids.double()[None]).abs()
    chosen = distance.gather(1, result.index.long()[:, None]).squeeze(1)
    assert bool((chosen <= distance.min(1).values + 1e-12).all())  # every weight at a nearest centroid


def test_a_clustered_model_pickles(example_input: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet()
    nncf_ext.create_compression(model, kmeans_config(bits=3), example_input)
    torch.save(model, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    assert torch.equal(loaded(example_input), model(example_input))


def test_l1_still_on_when_sparsity_preserving_clustering_starts_is_refused(
    example_input: torch.Tensor,
) -> None:
    l1 = {"algorithm": "l1_sparsity", "lambda": {"type": "multistep", "steps": {"0": 1e-4, "5": 0.0}}}
    kmeans = {"algorithm": "kmeans_quantization", "start_epoch": 3}
    for entries, path in (
        ([l1, kmeans], "compression[1].start_epoch"),
        ([kmeans, l1], "compression[0].start_epoch"),
    ):
        with pytest.raises(
            ConfigError, match=r"has lambda 0\.0001 at epoch 3; set lambda to 0 from epoch 3"
        ) as info:
            nncf_ext.create_compression(TinyNet(), {"compression": entries}, example_input)
        assert info.value.path == path
    late = {"algorithm": "l1_sparsity", "lambda": {"type": "multistep", "steps": {"0": 0.0, "5": 1e-4}}}
    with pytest.raises(ConfigError, match=r"has lambda 0\.0001 at epoch 5"):  # L1 turning on later
        nncf_ext.create_compression(TinyNet(), {"compression": [late, kmeans]}, example_input)
    fc_only = {**kmeans, "target_scope": {"names": ["fc.weight"]}}
    convs = {**l1, "target_scope": {"types": ["conv2d"]}}
    for entries in (
        [l1, {**kmeans, "start_epoch": 5}],
        [l1, {**kmeans, "preserve_sparsity": False}],
        [convs, fc_only],  # L1 on other weights than the clustered ones
    ):
        nncf_ext.create_compression(TinyNet(), {"compression": entries}, example_input)


def test_malformed_kmeans_state_is_refused_whole(example_input: torch.Tensor) -> None:
    from nncf_ext.errors import CheckpointError

    model = TinyNet()
    pipeline = nncf_ext.create_compression(model, kmeans_config(bits=3), example_input)
    state = pipeline.state_dict()
    for steps in (float("inf"), 2.9, "7", True):
        bad = {**state, "algorithms": [{**state["algorithms"][0], "steps": steps}]}
        with pytest.raises(CheckpointError, match="malformed compression state of compression\\[0\\]"):
            pipeline.load_state_dict(bad)
    assert pipeline.state_dict() == state


def test_reassign_finds_the_nearest_of_unsorted_trained_centroids(example_input: torch.Tensor) -> None:
    """Trained centroids can cross: reassignment must not assume the codebook is sorted."""
    torch.manual_seed(0)
    model = TinyNet()
    config = kmeans_config(bits=3, assignment="reassign", preserve_sparsity=False)
    pipeline = nncf_ext.create_compression(model, config, example_input)
    hook = quantizers(model)["fc.weight"]
    with torch.no_grad():
        hook.codebook.copy_(hook.codebook[torch.randperm(len(hook.codebook))])
    hook.invalidate()
    pipeline.algorithms[0].reassign()  # type: ignore[attr-defined]
    centroids = hook.effective_codebook().detach()
    assert torch.equal(
        hook.index.long().reshape(-1), brute_force_assignment(model.fc.weight.detach().reshape(-1), centroids)
    )


def test_kmeans_ties_go_to_the_lower_centroid() -> None:
    result = kmeans_1d(torch.tensor([0.0, 1.0, 2.0]), 2)
    assert result.centroids.tolist() == [0.5, 2.0]  # 1 is halfway between the initial 0 and 2
    assert nearest_centroid(torch.tensor([1.0, 0.9, 1.1]), torch.tensor([0.0, 2.0])).tolist() == [0, 0, 1]
