"""Compression statistics: per weight and in total, parameters, non-zeros, bits and stored sizes.

Sizes follow Deep Compression: quantized values at their bit-width, codebooks at ``codebook_bits`` per
entry, sparse layers in CSR with relative indices (fillers when a gap overflows the index width), each
layer stored in whichever of dense and CSR is smaller. Parameters without compression hooks are counted
dense at their own precision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from nncf.common.utils.helpers import create_table
from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE
from nncf.torch.quantization.layers import BaseQuantizer
from torch import nn

from nncf_ext.hooks import WeightHook, hook_storage_bits, weight_hooks
from nncf_ext.huffman import huffman_size
from nncf_ext.model import get_weight
from nncf_ext.quantizers import quantizer_codes
from nncf_ext.storage import SparseLayout, best_layout, relative_gaps, split_gaps


@dataclass
class LayerStatistic:
    """Storage of one compressed weight."""

    name: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    bits: int
    format: str
    index_bits: int
    entries: int
    codebook_entries: int
    metadata_bits: int
    dense_bytes: float
    nonzero_bytes: float
    compressed_bytes: float
    huffman_bytes: float
    entropy_bytes: float

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes if self.compressed_bytes else float("inf")


@dataclass
class CompressionStatistic:
    """Statistics of a compressed model; ``str()`` gives a table, :meth:`to_dict` a JSON-able dict."""

    layers: list[LayerStatistic] = field(default_factory=list)
    other_params: int = 0
    other_bytes: float = 0.0

    @property
    def params(self) -> int:
        return sum(s.params for s in self.layers) + self.other_params

    @property
    def nonzeros(self) -> int:
        return sum(s.nonzeros for s in self.layers) + self.other_params

    @property
    def compressed_params(self) -> int:
        return sum(s.params for s in self.layers)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros among the compressed weights."""
        n = self.compressed_params
        return 1.0 - sum(s.nonzeros for s in self.layers) / n if n else 0.0

    @property
    def dense_bytes(self) -> float:
        return sum(s.dense_bytes for s in self.layers) + self.other_bytes

    @property
    def compressed_bytes(self) -> float:
        return sum(s.compressed_bytes for s in self.layers) + self.other_bytes

    @property
    def nonzero_bytes(self) -> float:
        return sum(s.nonzero_bytes for s in self.layers) + self.other_bytes

    @property
    def huffman_bytes(self) -> float:
        return sum(s.huffman_bytes for s in self.layers) + self.other_bytes

    @property
    def entropy_bytes(self) -> float:
        return sum(s.entropy_bytes for s in self.layers) + self.other_bytes

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes if self.compressed_bytes else float("inf")

    @property
    def huffman_ratio(self) -> float:
        return self.dense_bytes / self.huffman_bytes if self.huffman_bytes else float("inf")

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for s in self.layers:
            d = asdict(s)
            d["shape"] = list(s.shape)
            d["sparsity"] = s.sparsity
            d["ratio"] = s.ratio
            layers.append(d)
        return {
            "layers": layers,
            "other_params": self.other_params,
            "other_bytes": self.other_bytes,
            "params": self.params,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "dense_bytes": self.dense_bytes,
            "nonzero_bytes": self.nonzero_bytes,
            "compressed_bytes": self.compressed_bytes,
            "huffman_bytes": self.huffman_bytes,
            "entropy_bytes": self.entropy_bytes,
            "ratio": self.ratio,
            "huffman_ratio": self.huffman_ratio,
        }

    def __str__(self) -> str:
        rows: list[list[Any]] = []
        for s in self.layers:
            fmt = f"csr/{s.index_bits}b" if s.format == "csr" else "dense"
            rows.append(
                [s.name, "x".join(map(str, s.shape)), s.params, f"{s.sparsity:.1%}", s.bits, fmt,
                 format_bytes(s.dense_bytes), format_bytes(s.compressed_bytes), format_bytes(s.huffman_bytes),
                 f"{s.dense_bytes / s.huffman_bytes:.1f}x"]
            )  # fmt: skip
        if self.other_params:
            size = format_bytes(self.other_bytes)
            rows.append(
                ["(other parameters)", "", self.other_params, "", 32, "dense", size, size, size, "1.0x"]
            )
        rows.append([None] * 10)
        rows.append(
            ["Total", "", self.params, f"{self.sparsity:.1%}", "", "", format_bytes(self.dense_bytes),
             format_bytes(self.compressed_bytes), format_bytes(self.huffman_bytes),
             f"{self.huffman_ratio:.1f}x"]
        )  # fmt: skip
        header = [
            "Weight",
            "Shape",
            "Params",
            "Sparsity",
            "Bits",
            "Format",
            "Dense",
            "Stored",
            "Huffman",
            "Ratio",
        ]
        return str(create_table(header=header, rows=rows))


def format_bytes(n: float) -> str:
    """Human-readable size: ``864 B``, ``2.25 KB``, ``41.4 MB``."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def _hook_metadata_bits(hook: nn.Module) -> int:
    """Bits of per-channel scales / ranges a quantizer stores beside the weights."""
    if isinstance(hook, BaseQuantizer) and hook.is_enabled_quantization():
        return sum(p.numel() * 32 for p in hook.parameters() if p.dtype.is_floating_point)
    return 0


@dataclass
class ValueSymbols:
    """How a layer's values are stored: integer codes over an alphabet, or raw floats (``codes`` None)."""

    codes: torch.Tensor | None
    alphabet: int
    zero_code: int | None  # code of an exact zero; None if zero has no code (then CSR is impossible)


def value_symbols(hooks: list[nn.Module], weight: torch.Tensor) -> tuple[torch.Tensor, ValueSymbols]:
    """Run ``weight`` through ``hooks``; the last quantizing hook decides how values are coded."""
    effective = weight.detach()
    symbols = ValueSymbols(None, 0, 0)
    for hook in hooks:
        effective = hook(effective)
        codes = (
            hook.value_codes() if isinstance(hook, WeightHook) and hook.storage_bits() is not None else None
        )
        if isinstance(hook, WeightHook) and codes is not None:
            codebook = hook.effective_codebook()
            assert codebook is not None
            zeros = torch.nonzero(codebook.detach() == 0).reshape(-1)
            zero_code = int(zeros[0]) if zeros.numel() else None
            symbols = ValueSymbols(codes.long(), hook.codebook_entries(), zero_code)
        elif isinstance(hook, BaseQuantizer) and hook.is_enabled_quantization():
            codes, zero = quantizer_codes(hook, effective)
            symbols = ValueSymbols(codes, 1 << int(hook.num_bits), zero)
    return effective, symbols


def _symbol_sizes(
    effective: torch.Tensor, symbols: ValueSymbols, layout: SparseLayout, bits: int
) -> tuple[int, float]:
    """Huffman-coded bits and entropy bound of values and relative indices under ``layout``."""
    huffman_bits = 0
    entropy = 0.0
    if layout.format == "csr":
        gaps = relative_gaps(effective)
        gap_codes, is_real = split_gaps(gaps, layout.index_bits)
        gap_freqs = torch.bincount(gap_codes, minlength=1 << layout.index_bits).numpy()
        size = huffman_size(gap_freqs)
        huffman_bits += size.total_bits
        entropy += size.entropy_bits
        fillers = int((~is_real).sum())
    if symbols.codes is None:
        huffman_bits += layout.entries * bits if layout.format == "csr" else effective.numel() * bits
        entropy += layout.entries * bits if layout.format == "csr" else effective.numel() * bits
        return huffman_bits, entropy
    codes = symbols.codes.reshape(-1)
    if layout.format == "csr":
        codes = codes[effective.reshape(-1) != 0]
    freqs = torch.bincount(codes, minlength=symbols.alphabet)
    if layout.format == "csr" and fillers:
        assert symbols.zero_code is not None
        freqs[symbols.zero_code] += fillers
    size = huffman_size(freqs.numpy())
    return huffman_bits + size.total_bits, entropy + size.entropy_bits


@torch.no_grad()
def layer_statistic(
    name: str,
    weight: torch.Tensor,
    hooks: list[nn.Module],
    *,
    codebook_bits: int = 32,
    index_bits: int | None = None,
) -> LayerStatistic:
    """Storage of ``weight`` after ``hooks`` (the chain a model applies to it)."""
    effective, symbols = value_symbols(hooks, weight)
    bits = weight.element_size() * 8
    codebook_entries = 0
    metadata = 0
    for hook in hooks:
        hook_bits = hook_storage_bits(hook)
        if hook_bits is not None:
            bits = hook_bits
        if isinstance(hook, WeightHook):
            codebook_entries = max(codebook_entries, hook.codebook_entries())
        metadata += _hook_metadata_bits(hook)
    sparse_ok = symbols.codes is None or symbols.zero_code is not None
    layout = best_layout(effective, bits, index_bits, allow_sparse=sparse_ok)
    extra = codebook_entries * codebook_bits + metadata
    huffman_bits, entropy = _symbol_sizes(effective, symbols, layout, bits)
    nonzeros = int(torch.count_nonzero(effective))
    return LayerStatistic(
        name=name,
        shape=tuple(weight.shape),
        params=weight.numel(),
        nonzeros=nonzeros,
        bits=bits,
        format=layout.format,
        index_bits=layout.index_bits,
        entries=layout.entries,
        codebook_entries=codebook_entries,
        metadata_bits=metadata,
        dense_bytes=weight.numel() * weight.element_size(),
        nonzero_bytes=(nonzeros * bits + extra) / 8,
        compressed_bytes=(layout.bits + extra) / 8,
        huffman_bytes=(min(huffman_bits, layout.bits) + extra) / 8,
        entropy_bytes=(entropy + extra) / 8,
    )


def compression_statistic(
    model: nn.Module, *, codebook_bits: int = 32, index_bits: int | None = None
) -> CompressionStatistic:
    """Statistics of every weight carrying compression hooks, plus the remaining parameters.

    :param codebook_bits: bits per stored codebook entry (32, or 16 for fp16 codebooks).
    :param index_bits: fixed relative-index width for CSR; by default each layer takes its best width.
    """
    hooks = weight_hooks(model)
    stat = CompressionStatistic()
    compressed: set[str] = set()
    for name, chain in hooks.items():
        stat.layers.append(
            layer_statistic(
                name, get_weight(model, name), chain, codebook_bits=codebook_bits, index_bits=index_bits
            )
        )
        compressed.add(name)
    for pname, param in model.named_parameters():
        if pname in compressed or pname.startswith(ATR_HOOK_STORAGE + "."):
            continue
        stat.other_params += param.numel()
        stat.other_bytes += param.numel() * param.element_size()
    return stat
