"""Compression statistics: per weight and in total, parameters, non-zeros, bits and stored sizes.

Sizes follow Deep Compression: quantized values at their bit-width, codebooks at ``codebook_bits`` per
entry, sparse layers in CSR with relative indices (fillers when a gap overflows the index width), each
layer stored in whichever of dense and CSR is smaller. Parameters without compression hooks are counted
dense at their own precision; the Huffman and entropy sizes, an archive's, count float16 where that holds a
tensor's values exactly (codebooks and quantizer ranges too), as an archive stores it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from nncf.common.utils.helpers import create_table
from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE
from torch import nn

from nncf_ext.errors import ModelError
from nncf_ext.hooks import weight_hooks
from nncf_ext.model import get_weight
from nncf_ext.storage import ir_bytes, layer_streams, storage_layout, stored_bits, weight_storage


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
    ir_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes if self.compressed_bytes else float("inf")


def _finite(ratio: float) -> float | None:
    """A ratio for JSON: None where nothing is stored (JSON has no infinity)."""
    return ratio if math.isfinite(ratio) else None


@dataclass
class CompressionStatistic:
    """Statistics of a compressed model; ``str()`` gives a table, :meth:`to_dict` a JSON-able dict."""

    layers: list[LayerStatistic] = field(default_factory=list)
    other_params: int = 0
    other_bytes: float = 0.0
    other_stored_bytes: float = 0.0  # as an archive stores them: float16 where that holds them exactly

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
    def other_bits(self) -> float:
        """Bits per element of the parameters without hooks: their dtype's, the mean where dtypes mix."""
        return self.other_bytes * 8 / self.other_params if self.other_params else 0.0

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
        return sum(s.huffman_bytes for s in self.layers) + self.other_stored_bytes

    @property
    def entropy_bytes(self) -> float:
        return sum(s.entropy_bytes for s in self.layers) + self.other_stored_bytes

    @property
    def ir_bytes(self) -> float:
        """Predicted weight bytes of the OpenVINO IR (``nncf_ext.export_openvino``)."""
        return sum(s.ir_bytes for s in self.layers) + self.other_bytes

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
            d["ratio"] = _finite(s.ratio)
            layers.append(d)
        return {
            "layers": layers,
            "other_params": self.other_params,
            "other_bytes": self.other_bytes,
            "other_stored_bytes": self.other_stored_bytes,
            "other_bits": self.other_bits,
            "params": self.params,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
            "dense_bytes": self.dense_bytes,
            "nonzero_bytes": self.nonzero_bytes,
            "compressed_bytes": self.compressed_bytes,
            "huffman_bytes": self.huffman_bytes,
            "entropy_bytes": self.entropy_bytes,
            "ir_bytes": self.ir_bytes,
            "ratio": _finite(self.ratio),
            "huffman_ratio": _finite(self.huffman_ratio),
        }

    def __str__(self) -> str:
        rows: list[list[Any]] = []
        for s in self.layers:
            fmt = f"csr/{s.index_bits}b" if s.format == "csr" else "dense"
            rows.append(
                [s.name, "x".join(map(str, s.shape)), s.params, f"{s.sparsity:.1%}", s.bits, fmt,
                 format_bytes(s.dense_bytes), format_bytes(s.compressed_bytes), format_bytes(s.huffman_bytes),
                 f"{s.dense_bytes / s.huffman_bytes:.1f}x" if s.huffman_bytes else "-"]
            )  # fmt: skip
        if self.other_params:
            size, bits = format_bytes(self.other_bytes), f"{self.other_bits:.3g}"  # 16, 32; 21.3 if mixed
            rows.append(
                ["(other parameters)", "", self.other_params, "", bits, "dense", size, size, size, "1.0x"]
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
    effective, storage = weight_storage(hooks, weight)
    layout = storage_layout(effective, storage, index_bits)
    extra = storage.metadata_bits(codebook_bits)
    coded = [stream.stored_bits() for stream in layer_streams(effective, storage, layout)]
    nonzeros = int(torch.count_nonzero(effective))
    return LayerStatistic(
        name=name,
        shape=tuple(weight.shape),
        params=weight.numel(),
        nonzeros=nonzeros,
        bits=storage.bits,
        format=layout.format,
        index_bits=layout.index_bits,
        entries=layout.entries,
        codebook_entries=storage.alphabet if storage.kind == "codebook" else 0,
        metadata_bits=extra,
        dense_bytes=weight.numel() * weight.element_size(),
        nonzero_bytes=(nonzeros * storage.bits + extra) / 8,
        compressed_bytes=(layout.bits + extra) / 8,
        huffman_bytes=(sum(bits for _, bits, _ in coded) + extra) / 8,
        entropy_bytes=(sum(bound for _, _, bound in coded) + extra) / 8,
        ir_bytes=ir_bytes(weight_storage(hooks, weight, prefer="int")[1], weight.numel()),
    )


def compression_statistic(
    model: nn.Module, *, codebook_bits: int = 32, index_bits: int | None = None
) -> CompressionStatistic:
    """Statistics of every weight carrying compression hooks, plus the remaining parameters.

    :param codebook_bits: bits per stored codebook entry (32, or 16 for fp16 codebooks).
    :param index_bits: fixed relative-index width for CSR; by default each layer takes its best width.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"compression_statistic expects a torch.nn.Module, got {type(model).__name__}")
    for name, value, top in (("codebook_bits", codebook_bits, 64), ("index_bits", index_bits, 32)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top
        ):
            raise ModelError(f"{name} must be an integer in [1, {top}], got {value!r}")
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
        stat.other_stored_bytes += stored_bits(param) / 8
    return stat
