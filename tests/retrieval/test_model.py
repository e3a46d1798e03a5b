"""RetrievalNet: three named submodules, unit-norm descriptors, data initialisation, full-size parameter count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_modules.retrieval import RetrievalNet, build_retrieval_net
from nncf_ext.errors import ModelError


def test_full_size_alexnet_netvlad_pca_has_69_6m_parameters() -> None:
    model = build_retrieval_net("alexnet")
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    # AlexNet conv1-5; NetVLAD K=64, D=256 (1x1 conv + centroids); PCA 64*256 -> 4096 (weight + bias)
    assert counts == {
        "backbone": 2_469_696,
        "netvlad": 64 * 256 + 64 + 64 * 256,
        "whitening": 16384 * 4096 + 4096,
    }
    assert sum(counts.values()) == 69_615_488
    assert not isinstance(model, nn.Sequential)
    assert model.netvlad.num_clusters == 64 and model.out_features == 4096


def test_small_model_gives_unit_norm_descriptors_and_inits_from_images() -> None:
    torch.manual_seed(0)
    model = build_retrieval_net("small", widths=(8, 16), num_clusters=4, whitening_dim=16)
    images = torch.randn(40, 3, 16, 16)
    model.init_from_images([images[:20], (images[20:], torch.arange(20))])
    assert model.training  # mode restored
    model.eval()
    with torch.no_grad():
        out = model(images)
        vlad = model.vlad(images)
    assert out.shape == (40, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(40), atol=1e-5)
    whitened = model.whitening(vlad)
    assert torch.allclose(torch.cov(whitened.T), torch.eye(16), atol=1e-3)  # PCA fitted on these images
    assert torch.allclose(
        model.netvlad.centroids.norm(dim=1), torch.ones(4), atol=0.2
    )  # k-means of unit descriptors


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ModelError, match="unknown retrieval architecture 'resnet'"):
        build_retrieval_net("resnet")
    model = build_retrieval_net("small", widths=(8,), num_clusters=2, whitening_dim=4)
    with pytest.raises(ModelError, match="whitening takes 32 inputs, NetVLAD gives 16"):
        RetrievalNet(model.backbone, model.netvlad, type(model.whitening)(32, 4))
    with pytest.raises(ModelError, match="num_clusters and dim must be positive, got 0"):
        build_retrieval_net("small", widths=(8,), num_clusters=0)  # 0 is not "the default"
    with pytest.raises(ModelError, match=r"out_features must be in \[1, in_features=16\], got 32"):
        build_retrieval_net("small", widths=(8,), num_clusters=2, whitening_dim=32)


def test_a_failed_init_from_images_leaves_the_model_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """NetVLAD used to be overwritten before the whitening step failed (too few images, a one-shot iterator
    whose second pass is empty, any later error)."""
    torch.manual_seed(0)
    model = build_retrieval_net("small", widths=(8, 8), num_clusters=4, whitening_dim=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def unchanged() -> bool:
        return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    with pytest.raises(ModelError, match="whitening to 16 dims needs more than 16 images, got 2"):
        model.init_from_images([torch.randn(2, 3, 8, 8)])
    assert unchanged()
    with pytest.raises(ModelError, match="batches must be re-iterable"):
        model.init_from_images(torch.randn(20, 3, 16, 16) for _ in range(2))
    assert unchanged()

    def fails(descriptors: torch.Tensor) -> None:
        raise ModelError("whitening failed")

    monkeypatch.setattr(model.whitening, "init_from_descriptors", fails)
    with pytest.raises(ModelError, match="whitening failed"):
        model.init_from_images([torch.randn(20, 3, 16, 16)])
    assert unchanged() and model.training


@pytest.mark.parametrize(
    ("arch", "kwargs", "message"),
    [
        ("small", {"num_clusters": 2.5}, "num_clusters must be a positive integer, got 2.5"),
        ("small", {"num_clusters": "4"}, "num_clusters must be a positive integer, got '4'"),
        ("small", {"num_clusters": True}, "num_clusters must be a positive integer, got True"),
        ("small", {"whitening_dim": 12.5}, "whitening_dim must be a positive integer, got 12.5"),
        (
            "small",
            {"widths": (8, 4.5)},
            r"widths must be a non-empty sequence of positive integers, got \(8, 4.5\)",
        ),
        ("small", {"widths": 8}, "widths must be a non-empty sequence of positive integers, got 8"),
        ("small", {"widths": ()}, "widths must be a non-empty sequence"),
        ("small", {"widths": (8, True)}, "widths must be a non-empty sequence"),
        ("small", {"batch_norm": "no"}, "batch_norm must be a bool, got 'no'"),
        ("small", {"width": (8,)}, r"the 'small' backbone takes \['widths', 'batch_norm'\], not \['width'\]"),
        ("alexnet", {"widths": (8,)}, r"the 'alexnet' backbone takes no arguments, not \['widths'\]"),
        (["small"], {}, r"unknown retrieval architecture \['small'\]"),
    ],
)
def test_wrongly_typed_sizes_are_named(arch: object, kwargs: dict[str, object], message: str) -> None:
    """2.5 clusters or widths were a misleading "out_channels must be divisible by groups"; others TypeErrors."""
    with pytest.raises(ModelError, match=message):
        build_retrieval_net(arch, **kwargs)  # type: ignore[arg-type]


def test_numpy_integer_sizes_build() -> None:
    import numpy as np

    model = build_retrieval_net(
        "small",
        widths=[np.int64(8)],
        num_clusters=np.int64(2),  # type: ignore[arg-type]
        whitening_dim=np.int32(4),  # type: ignore[arg-type]
    )
    assert model.netvlad.num_clusters == 2 and model.out_features == 4 and model.backbone.out_channels == 8
