"""Weighted 1-D "atoms" summarising a weight tensor for k-means without an N x k distance matrix.

Small tensors are summarised exactly by their distinct values. Large ones by a fine histogram whose bins
keep the exact count and sum of their members, so every cluster mean computed from atoms is the exact
mean of the weights assigned to it; a weight is assigned with its bin (resolution ``range / bins``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EXACT_LIMIT = 1 << 18  # up to this many weights, atoms are the distinct values themselves
HISTOGRAM_BINS = 1 << 16


@dataclass
class Atoms:
    """Sorted representative values with their member counts and sums (float64 for exact means)."""

    values: torch.Tensor  # (A,) float64, increasing
    counts: torch.Tensor  # (A,) float64
    sums: torch.Tensor  # (A,) float64
    # how to map each weight to its atom: exact (searchsorted on values) or by histogram bin
    low: float = 0.0
    scale: float = 0.0
    bin_to_atom: torch.Tensor | None = None  # (bins,) long, for histogram atoms
    weight_bins: torch.Tensor | None = None  # (N,) int32 bin of each weight it was built from, if kept

    def __len__(self) -> int:
        return int(self.values.numel())

    def lookup(self, weights: torch.Tensor, atom_table: torch.Tensor) -> torch.Tensor:
        """``atom_table[atom of w]`` for each weight ``w`` (flattened), without materialising atom indices."""
        flat = weights.reshape(-1).float()  # the dtype the atoms were made from
        if self.bin_to_atom is None:
            return atom_table[torch.searchsorted(self.values.to(flat.dtype), flat)]
        bins = self.weight_bins
        if bins is None or bins.numel() != flat.numel():
            bins = histogram_bin(flat, self.low, self.scale, self.bin_to_atom.numel())
        return atom_table[self.bin_to_atom].index_select(0, bins)


def histogram_bin(flat: torch.Tensor, low: float, scale: float, bins: int | None = None) -> torch.Tensor:
    """Bin of each value: ``floor((w - low) * scale)``; clamped to ``[0, bins - 1]`` when ``bins`` is given.

    ``low`` is subtracted first: ``w * scale - low * scale`` cancels catastrophically when ``|w| * scale``
    is large (a narrow spread far from zero). Values in ``[low, high]`` need no clamp: ``w - low >= 0``
    exactly, and ``(high - low) * scale`` rounds to less than ``bins``.
    """
    binned = torch.sub(flat, low).mul_(scale)
    if bins is not None:
        binned.clamp_(0, bins - 1)
    return binned.to(torch.int32)


def make_atoms(
    weights: torch.Tensor, bins: int = HISTOGRAM_BINS, exact_limit: int = EXACT_LIMIT, keep_bins: bool = False
) -> Atoms:
    """Atoms of a non-empty tensor of finite values; ``keep_bins`` keeps each weight's bin for ``lookup``."""
    flat = weights.reshape(-1).float()
    if flat.numel() <= exact_limit:
        values, counts = torch.unique(flat, sorted=True, return_counts=True)
        v64 = values.double()
        c64 = counts.double()
        return Atoms(v64, c64, v64 * c64)
    low_t, high_t = torch.aminmax(flat)
    low, high = float(low_t), float(high_t)
    if high == low:
        v = torch.tensor([low], dtype=torch.float64)
        return Atoms(v, torch.tensor([float(flat.numel())], dtype=torch.float64), v * flat.numel())
    scale = (bins - 1) / (high - low)
    shifted = torch.sub(flat, low)  # as histogram_bin computes it, so the bins are the same
    idx = (shifted * scale).to(torch.int32)
    counts = torch.bincount(idx, minlength=bins).double()
    # sums of w - low: float32 errors scale with the spread, not with the offset of a narrow layer far from
    # zero; each mean is then held inside its own bin, so the atoms stay sorted (searchsorted needs it)
    shifted_sums = torch.bincount(idx, weights=shifted, minlength=bins).double()
    occupied = counts > 0
    bin_to_atom = torch.cumsum(occupied.long(), 0) - 1
    edges = torch.nonzero(occupied).reshape(-1).double() / scale
    counts, shifted_sums = counts[occupied], shifted_sums[occupied]
    values = low + torch.minimum(torch.maximum(shifted_sums / counts, edges), edges + 1 / scale)
    return Atoms(values, counts, values * counts, low, scale, bin_to_atom, idx if keep_bins else None)
