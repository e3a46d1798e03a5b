"""Centroid initialisers for 1-D k-means, each a small strategy over weighted atoms (as TF-MOT's
``clustering_centroids``): ``linear`` (Deep Compression's best), ``density``, ``random``, ``kmeans++``."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nncf_ext.algorithms.kmeans_quantization.atoms import Atoms


def linear_init(atoms: Atoms, k: int, generator: torch.Generator) -> torch.Tensor:
    """Evenly spaced between the smallest and the largest weight."""
    return torch.linspace(float(atoms.values[0]), float(atoms.values[-1]), k, dtype=torch.float64)


def density_init(atoms: Atoms, k: int, generator: torch.Generator) -> torch.Tensor:
    """Evenly spaced on the cumulative distribution: the (i + 0.5) / k quantiles."""
    cdf = torch.cumsum(atoms.counts, 0)
    levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k * cdf[-1]
    idx = torch.searchsorted(cdf, levels).clamp_(max=len(atoms) - 1)
    return atoms.values[idx]


def random_init(atoms: Atoms, k: int, generator: torch.Generator) -> torch.Tensor:
    """Forgy: k distinct weights drawn at random (probability proportional to how often a value occurs)."""
    n = min(k, len(atoms))
    idx = torch.multinomial(atoms.counts, n, replacement=False, generator=generator)
    chosen = atoms.values[idx]
    if n < k:
        chosen = torch.cat([chosen, chosen[-1:].expand(k - n)])
    return torch.sort(chosen).values


def kmeans_plus_plus_init(atoms: Atoms, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) over the weighted atoms: D(x)^2 x count sampling."""
    first = torch.multinomial(atoms.counts, 1, generator=generator)
    centroids = [atoms.values[first]]
    dist2 = (atoms.values - centroids[0]) ** 2
    for _ in range(1, k):
        weights = dist2 * atoms.counts
        total = float(weights.sum())
        if total <= 0.0:  # fewer distinct values than clusters: repeat the last one
            centroids.append(centroids[-1])
            continue
        nxt = torch.multinomial(weights, 1, generator=generator)
        centroids.append(atoms.values[nxt])
        dist2 = torch.minimum(dist2, (atoms.values - atoms.values[nxt]) ** 2)
    return torch.sort(torch.cat(centroids)).values


Initializer = Callable[[Atoms, int, torch.Generator], torch.Tensor]

INITIALIZERS: dict[str, Initializer] = {
    "linear": linear_init,
    "density": density_init,
    "random": random_init,
    "kmeans++": kmeans_plus_plus_init,
}
