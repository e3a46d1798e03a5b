"""NetVLAD: shapes and norms, k-means initialisation and the Arandjelovic et al. assignment weights."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_modules.retrieval.netvlad import NetVLAD, kmeans
from nncf_ext.errors import ModelError


def test_output_is_intra_normalised_then_l2_normalised() -> None:
    torch.manual_seed(0)
    vlad = NetVLAD(num_clusters=8, dim=16)
    out = vlad(torch.randn(3, 16, 5, 7))
    assert out.shape == (3, 8 * 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    blocks = out.view(3, 8, 16).norm(dim=2)  # every cluster's residual has the same norm 1/sqrt(K)
    assert torch.allclose(blocks, torch.full_like(blocks, 1 / math.sqrt(8)), atol=1e-5)


def test_local_descriptors_are_l2_normalised_first() -> None:
    """``normalize_input`` (the default, as NetVLAD): scaling each local descriptor changes nothing."""
    torch.manual_seed(0)
    vlad = NetVLAD(num_clusters=8, dim=16)
    x = torch.randn(2, 16, 4, 5)
    scale = torch.rand(2, 1, 4, 5) * 10 + 0.1  # a different positive scale per location
    assert torch.allclose(vlad(x * scale), vlad(x), atol=1e-5)
    raw = NetVLAD(num_clusters=8, dim=16, normalize_input=False)
    raw.load_state_dict(vlad.state_dict())
    assert not torch.allclose(raw(x * scale), raw(x), atol=1e-3)


def test_residuals_are_soft_assignment_weighted() -> None:
    """With one cluster the VLAD is the normalised sum of (x - c) over locations."""
    vlad = NetVLAD(num_clusters=1, dim=4, normalize_input=False)
    x = torch.randn(2, 4, 3, 3)
    expected = torch.nn.functional.normalize((x.flatten(2) - vlad.centroids[0, :, None]).sum(2), dim=1)
    assert torch.allclose(vlad(x), expected, atol=1e-5)


def blobs(n: int = 400, dim: int = 6, k: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(k, dim, generator=g) * 5
    labels = torch.arange(n) % k
    return centres[labels] + 0.3 * torch.randn(n, dim, generator=g), labels


def test_kmeans_finds_separated_clusters() -> None:
    x, labels = blobs()
    centroids = kmeans(x, 4, seed=1)
    assign = torch.cdist(x, centroids).argmin(1)
    # each true cluster maps to exactly one centroid
    assert all(assign[labels == c].unique().numel() == 1 for c in range(4))
    assert assign.unique().numel() == 4
    with pytest.raises(ModelError, match="at least k=5 rows"):
        kmeans(x[:4], 5)


def test_init_sets_assignment_to_nearest_centroid_with_alpha_from_distances() -> None:
    x, _ = blobs(dim=8)
    vlad = NetVLAD(num_clusters=4, dim=8)
    alpha = vlad.init_from_descriptors(x)
    xn = torch.nn.functional.normalize(x, dim=1)
    c = vlad.centroids.detach()
    assert torch.allclose(vlad.conv.weight[:, :, 0, 0], 2 * alpha * c)
    assert vlad.conv.bias is not None and torch.allclose(vlad.conv.bias, -alpha * c.square().sum(1))
    logits = vlad.conv(xn[:, :, None, None])[:, :, 0, 0]
    dist = torch.cdist(xn, c).square()
    assert torch.equal(logits.argmax(1), dist.argmin(1))
    # logits differ from -alpha * distance by a per-descriptor constant, and the nearest centroid is on average
    # 100x likelier than the second nearest (alpha = log(100) / mean(d2 - d1))
    assert torch.allclose(
        logits + alpha * dist, (alpha * xn.square().sum(1))[:, None].expand_as(logits), atol=1e-3
    )
    top2 = logits.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).mean().item() == pytest.approx(math.log(100), rel=1e-4)
