"""PCA whitening as an nn.Linear: y = W (x - mu) with W = diag(lambda^-1/2) U^T decorrelates the data."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.retrieval.whitening import PCAWhitening
from nncf_ext.errors import ModelError


def correlated(n: int = 500, dim: int = 12) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(dim, dim, generator=g) * torch.logspace(0, -2, dim)
    return torch.randn(n, dim, generator=g) @ mixing + 3.0


def test_whitened_training_descriptors_have_identity_covariance() -> None:
    x = correlated()
    layer = PCAWhitening(12, 6)
    eigenvalues = layer.init_from_descriptors(x, eps=0.0)
    with torch.no_grad():
        y = layer(x)
    assert torch.allclose(y.mean(0), torch.zeros(6), atol=1e-4)
    assert torch.allclose(torch.cov(y.T), torch.eye(6), atol=1e-4)
    assert torch.all(eigenvalues[:-1] >= eigenvalues[1:])  # the leading components are kept
    mean = x.mean(0)
    assert torch.allclose(layer.bias, -layer.weight @ mean, atol=1e-4)  # y = W (x - mu)
    assert isinstance(layer, torch.nn.Linear)


def test_regularisation_is_relative_to_the_largest_eigenvalue() -> None:
    """``eps`` scales with the data: descriptors 1e-4 times smaller give weights 1e4 times larger."""
    x = correlated()
    big, small = PCAWhitening(12, 6), PCAWhitening(12, 6)
    big.init_from_descriptors(x, eps=0.1)
    small.init_from_descriptors(x * 1e-4, eps=0.1)
    assert torch.allclose(small.weight * 1e-4, big.weight, rtol=1e-4, atol=1e-6)


def test_needs_more_descriptors_than_dimensions() -> None:
    with pytest.raises(ModelError, match="more than 6 descriptors"):
        PCAWhitening(12, 6).init_from_descriptors(correlated(n=6))
    with pytest.raises(ModelError, match="span only 3 dimensions"):
        PCAWhitening(12, 6).init_from_descriptors(correlated()[:, :3].repeat(1, 4))
    with pytest.raises(ModelError, match="NaN or Inf"):
        PCAWhitening(12, 6).init_from_descriptors(correlated().index_fill(0, torch.tensor([3]), float("nan")))
    with pytest.raises(ModelError, match=r"out_features must be in \[1, in_features=12\], got 16"):
        PCAWhitening(12, 16)  # whitening cannot add dimensions
