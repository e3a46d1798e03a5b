"""PCA whitening as a learnable ``nn.Linear``: ``y = W (x - mu)``, ``W = diag(lambda^-1/2) U^T`` from data."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncf_ext.errors import ModelError


class PCAWhitening(nn.Linear):
    """A plain linear layer (``weight``, ``bias``) that :meth:`init_from_descriptors` sets to PCA whitening.

    The L2 normalisation that follows it lives in :class:`~lightning_modules.retrieval.model.RetrievalNet`, so
    this stays an ``nn.Linear`` that compression and export treat like any other.
    """

    def __init__(self, in_features: int, out_features: int, **kwargs: Any) -> None:
        if not 0 < out_features <= in_features:
            raise ModelError(
                f"PCAWhitening: out_features must be in [1, in_features={in_features}], got {out_features}"
            )
        super().__init__(in_features, out_features, **kwargs)

    @torch.no_grad()
    def init_from_descriptors(self, descriptors: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Fit on ``(N, in_features)`` descriptors (``N > out_features``); returns the kept eigenvalues.

        ``eps`` is added to the eigenvalues relative to the largest (``lambda + eps * lambda_max``).
        """
        if descriptors.ndim != 2 or descriptors.shape[1] != self.in_features:
            raise ModelError(
                f"PCAWhitening expects (N, {self.in_features}) descriptors, got {tuple(descriptors.shape)}"
            )
        if not bool(torch.isfinite(descriptors).all()):
            raise ModelError("PCAWhitening: the descriptors contain NaN or Inf")
        n = descriptors.shape[0]
        if n <= self.out_features:
            raise ModelError(
                f"PCAWhitening to {self.out_features} dims needs more than {self.out_features} descriptors, "
                f"got {n}"
            )
        dtype = torch.float64 if n * self.in_features <= 20_000_000 else torch.float32
        x = descriptors.detach().to(dtype)
        mean = x.mean(0)
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        eigvals = singular.square() / (n - 1)
        kept = eigvals[: self.out_features]
        if not bool(kept[-1] > 1e-10 * kept[0]):
            rank = int((eigvals > 1e-10 * eigvals[0]).sum())
            raise ModelError(
                f"PCAWhitening: descriptors span only {rank} dimensions, fewer than "
                f"out_features={self.out_features}"
            )
        weight = vh[: self.out_features] / (kept + eps * kept[0]).sqrt()[:, None]
        self.weight.copy_(weight.to(self.weight))
        self.bias.copy_((-weight @ mean).to(self.bias))
        return kept.float()
