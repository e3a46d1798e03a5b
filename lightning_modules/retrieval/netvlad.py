"""NetVLAD pooling (Arandjelovic et al., CVPR 2016) and the vectorised k-means that initialises it."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from nncf_ext.errors import ModelError


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """``k`` centroids of the rows of ``x`` (k-means++ seeding, then Lloyd iterations on ``torch.cdist``)."""
    if x.ndim != 2 or x.shape[0] < k:
        raise ModelError(f"kmeans: need a 2-D tensor with at least k={k} rows, got shape {tuple(x.shape)}")
    x = x.detach().float()
    g = torch.Generator(device="cpu").manual_seed(seed)
    centroids = x[torch.randint(x.shape[0], (1,), generator=g)]
    closest = torch.cdist(x, centroids).squeeze(1).square()
    for _ in range(1, k):  # k-means++: next seed drawn with probability ~ squared distance to the chosen ones
        weights = closest if bool(closest.sum() > 0) else torch.ones_like(closest)
        pick = torch.multinomial(weights.cpu(), 1, generator=g).to(x.device)
        centroids = torch.cat([centroids, x[pick]])
        closest = torch.minimum(closest, (x - x[pick]).square().sum(1))
    assign = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
    for _ in range(iters):
        dist = torch.cdist(x, centroids)
        new_assign = dist.argmin(1)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        centroids = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centroids)
        empty = (counts == 0).nonzero().flatten()
        if empty.numel():  # re-seed empty clusters at the points farthest from their centroid
            far = dist.gather(1, assign[:, None]).squeeze(1).topk(empty.numel()).indices
            centroids[empty] = x[far]
    return centroids


class NetVLAD(nn.Module):
    """NetVLAD: soft assignment by a 1x1 convolution, residual aggregation, intra-normalisation, then L2.

    Input ``(N, dim, H, W)`` local descriptors (L2-normalised per location first when ``normalize_input``);
    output ``(N, num_clusters * dim)``, cluster-major, with unit L2 norm.
    """

    def __init__(self, num_clusters: int = 64, dim: int = 256, normalize_input: bool = True) -> None:
        super().__init__()
        if num_clusters < 1 or dim < 1:
            raise ModelError(f"NetVLAD: num_clusters and dim must be positive, got {num_clusters}, {dim}")
        self.num_clusters = num_clusters
        self.dim = dim
        self.normalize_input = normalize_input
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=True)
        self.centroids = nn.Parameter(torch.rand(num_clusters, dim))

    @property
    def out_features(self) -> int:
        return self.num_clusters * self.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, dim, H, W)`` -> ``(N, num_clusters * dim)`` unit-norm VLAD vectors."""
        if not torch.jit.is_tracing() and (x.ndim != 4 or x.shape[1] != self.dim):
            raise ModelError(f"NetVLAD expects (N, {self.dim}, H, W) local descriptors, got {tuple(x.shape)}")
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)  # (N, K, HW)
        local = x.flatten(2)  # (N, D, HW)
        vlad = (
            torch.bmm(assign, local.transpose(1, 2)) - assign.sum(2, keepdim=True) * self.centroids
        )  # (N, K, D)
        vlad = F.normalize(vlad, dim=2)  # intra-normalisation
        return F.normalize(vlad.flatten(1), dim=1)

    @torch.no_grad()
    def init_from_descriptors(
        self, local_descriptors: torch.Tensor, max_samples: int = 50_000, iters: int = 25, seed: int = 0
    ) -> float:
        """Centroids by k-means of ``(M, dim)`` local descriptors; assignment conv as Arandjelovic et al.

        ``w_k = 2 alpha c_k``, ``b_k = -alpha ||c_k||^2``, so that
        ``softmax(conv(x)) = softmax(-alpha ||x - c_k||^2)``; ``alpha`` makes the nearest centroid ``100x``
        likelier than the second nearest on average. Returns alpha.
        """
        if local_descriptors.ndim != 2 or local_descriptors.shape[1] != self.dim:
            raise ModelError(
                f"NetVLAD.init_from_descriptors expects (M, {self.dim}) descriptors, "
                f"got {tuple(local_descriptors.shape)}"
            )
        x = local_descriptors.detach().float()
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        g = torch.Generator(device="cpu").manual_seed(seed)
        if x.shape[0] > max_samples:
            x = x[torch.randperm(x.shape[0], generator=g)[:max_samples].to(x.device)]
        centroids = kmeans(x, self.num_clusters, iters=iters, seed=seed)
        nearest = torch.cdist(x, centroids).square().topk(2, dim=1, largest=False).values
        gap = (nearest[:, 1] - nearest[:, 0]).mean()
        if not bool(gap > 0):
            raise ModelError(
                "NetVLAD.init_from_descriptors: descriptors do not separate the clusters (zero gap)"
            )
        alpha = math.log(100.0) / float(gap)
        device = self.centroids.device
        self.centroids.copy_(centroids.to(device))
        self.conv.weight.copy_((2 * alpha * centroids)[:, :, None, None].to(device))
        bias = self.conv.bias
        if bias is not None:  # always set in __init__
            bias.copy_((-alpha * centroids.square().sum(1)).to(device))
        return alpha
