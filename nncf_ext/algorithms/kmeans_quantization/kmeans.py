"""Fast 1-D k-means: Lloyd iterations over weighted atoms (see ``atoms.py``), vectorised throughout.

Each iteration costs O(A log k) for A atoms (at most 65536), independent of the number of weights; the
weights are touched only to build the atoms and to assign the final indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nncf_ext.algorithms.kmeans_quantization.atoms import Atoms, make_atoms
from nncf_ext.algorithms.kmeans_quantization.init import INITIALIZERS


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # (k,) float32, non-decreasing
    index: torch.Tensor  # weights.shape, uint8 for k <= 256, else int32
    iterations: int


def index_dtype(k: int) -> torch.dtype:
    return torch.uint8 if k <= 256 else torch.int32


def nearest_centroid(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest of sorted ``centroids`` for each value (ties go to the lower centroid)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return torch.searchsorted(mids.to(values.dtype), values, right=False)


def lloyd(
    atoms: Atoms, centroids: torch.Tensor, max_iter: int = 100, tol: float = 1e-7
) -> tuple[torch.Tensor, int]:
    """Weighted Lloyd iterations; empty clusters keep their centroid. Returns sorted centroids.

    In 1-D each cluster is a run of consecutive atoms, so with prefix sums of the atoms' counts and sums an
    iteration costs k binary searches: O(k log A), independent of the number of atoms A.
    """
    zero = torch.zeros(1, dtype=torch.float64)
    prefix_counts = torch.cat([zero, torch.cumsum(atoms.counts, 0)])
    prefix_sums = torch.cat([zero, torch.cumsum(atoms.sums, 0)])
    c = torch.sort(centroids.double()).values
    span = float(atoms.values[-1] - atoms.values[0]) or 1.0
    last = torch.tensor([len(atoms)])
    first = torch.tensor([0])
    for it in range(1, max_iter + 1):
        mids = (c[1:] + c[:-1]) / 2
        bounds = torch.cat([first, torch.searchsorted(atoms.values, mids, right=True), last])
        counts = prefix_counts[bounds[1:]] - prefix_counts[bounds[:-1]]
        sums = prefix_sums[bounds[1:]] - prefix_sums[bounds[:-1]]
        new = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), c)).values
        shift = float((new - c).abs().max())
        c = new
        if shift <= tol * span:
            return c, it
    return c, max_iter


def kmeans_1d(
    weights: torch.Tensor,
    k: int,
    init: str = "linear",
    *,
    max_iter: int = 100,
    seed: int = 0,
    atoms: Atoms | None = None,
) -> KMeansResult:
    """Cluster the values of ``weights`` into ``k`` centroids; ``index`` maps each weight to its centroid."""
    if weights.numel() == 0:
        raise ValueError("cannot cluster an empty tensor")
    if init not in INITIALIZERS:
        raise ValueError(f"unknown initialisation '{init}', expected one of {sorted(INITIALIZERS)}")
    atoms = atoms if atoms is not None else make_atoms(weights, keep_bins=True)
    generator = torch.Generator().manual_seed(seed)
    start = INITIALIZERS[init](atoms, k, generator)
    centroids, iterations = lloyd(atoms, start, max_iter=max_iter)
    atom_cluster = nearest_centroid(atoms.values, centroids).to(index_dtype(k))
    index = atoms.lookup(weights, atom_cluster).reshape(weights.shape)
    return KMeansResult(centroids.float(), index, iterations)
