"""Storage formats of Deep Compression (Han et al. 2016), computed exactly from a weight tensor.

Sparse weights are stored as a flat list of (relative index, value) entries: each non-zero is stored with
the gap to the previous one in ``index_bits`` bits. A gap larger than ``2 ** index_bits`` is bridged by
filler entries of value zero, so a gap ``g`` costs ``ceil(g / 2 ** index_bits)`` entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_INDEX_BITS = 16


def relative_gaps(weight: torch.Tensor) -> torch.Tensor:
    """Gaps between consecutive non-zeros of the flattened tensor (the first is its position + 1)."""
    positions = torch.nonzero(weight.reshape(-1) != 0).reshape(-1)
    if positions.numel() == 0:
        return positions
    return torch.diff(positions, prepend=positions.new_full((1,), -1))


def csr_entries(gaps: torch.Tensor, index_bits: int) -> int:
    """Entries (non-zeros plus fillers) needed when each gap is stored in ``index_bits`` bits."""
    if gaps.numel() == 0:
        return 0
    return int(((gaps - 1) >> index_bits).sum()) + gaps.numel()


def split_gaps(gaps: torch.Tensor, index_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored (gap - 1) codes and a mask of which entries are real non-zeros (others are fillers)."""
    span = 1 << index_bits
    counts = (gaps - 1) // span + 1
    total = int(counts.sum())
    ends = torch.cumsum(counts, 0)
    is_real = torch.zeros(total, dtype=torch.bool)
    is_real[ends - 1] = True
    codes = torch.full((total,), span - 1, dtype=torch.long)
    codes[ends - 1] = (gaps - 1) % span
    return codes, is_real


@dataclass(frozen=True)
class SparseLayout:
    """The cheapest way to store a tensor: dense, or relative-index CSR with the best index width."""

    format: str  # "dense" or "csr"
    index_bits: int
    entries: int
    bits: int  # total bits of values and indices (codebooks and scales not included)


def best_layout(
    weight: torch.Tensor, value_bits: int, index_bits: int | None = None, allow_sparse: bool = True
) -> SparseLayout:
    """Dense (``numel * value_bits``) or CSR, whichever is smaller; CSR tries every index width up to 16."""
    numel = weight.numel()
    dense = SparseLayout("dense", 0, numel, numel * value_bits)
    if not allow_sparse:
        return dense
    gaps = relative_gaps(weight)
    candidates = [index_bits] if index_bits is not None else range(1, MAX_INDEX_BITS + 1)
    best = dense
    for b in candidates:
        entries = csr_entries(gaps, b)
        bits = entries * (value_bits + b)
        if bits < best.bits or (index_bits is not None and best is dense and bits == dense.bits):
            best = SparseLayout("csr", b, entries, bits)
    return best
