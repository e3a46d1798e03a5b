"""How a compressed weight is stored, exactly, in Deep Compression's terms (Han et al. 2016).

Values: a weight is coded as ``codebook`` indices (weight sharing), ``int`` levels with per-channel scales
(uniform quantization) or raw ``float`` values. Positions: dense, or a flat list of (relative index, value)
entries where each non-zero is stored with the gap to the previous one in ``index_bits`` bits; a gap larger
than ``2 ** index_bits`` is bridged by filler entries of value zero, so a gap ``g`` costs
``ceil(g / 2 ** index_bits)`` entries. Each symbol stream is then Huffman coded when that is smaller.

Statistics, the OpenVINO writer and the archive all read weights through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from nncf.torch.quantization.layers import BaseQuantizer, SymmetricQuantizer
from torch import nn

from nncf_ext.hooks import WeightHook
from nncf_ext.huffman import HuffmanSize, huffman_size
from nncf_ext.quantizers import quantizer_codes

MAX_INDEX_BITS = 16
HALF_HOLDS = (torch.float32, torch.float64)  # dtypes whose values float16 may hold exactly


def as_float16(tensor: torch.Tensor) -> torch.Tensor | None:
    """``tensor`` in float16 where that gives back its (float32 / float64) values exactly, else None: such a
    tensor is stored in 2 bytes per value (:func:`~nncf_ext.export.rounding.round_to_float16` makes a model's
    floats so). The conversion keeps the sign of zero; a NaN never compares equal, so it stays as it is."""
    if tensor.dtype not in HALF_HOLDS or tensor.numel() == 0:
        return None
    tensor = tensor.detach().cpu()
    half = tensor.to(torch.float16)
    return half if torch.equal(half.to(tensor.dtype), tensor) else None


def stored_bits(tensor: torch.Tensor) -> int:
    """Bits an archive spends on ``tensor`` stored raw: 16 per value where float16 holds it exactly."""
    return tensor.numel() * (16 if as_float16(tensor) is not None else tensor.element_size() * 8)


# -- values ----------------------------------------------------------------------------------------------
@dataclass
class WeightStorage:
    """The coded values of one weight. ``codes`` are in ``[0, alphabet)``; ``zero_code`` codes 0.0 exactly.

    * ``codebook``: ``w = codebook[codes]``;
    * ``int``: ``w = (codes - zero_point) * scale`` (per output channel); ``signed`` when symmetric, i.e.
      ``zero_point == 2 ** (bits - 1)`` everywhere;
    * ``float``: raw values (``codes`` is None).
    """

    kind: str
    bits: int
    codes: torch.Tensor | None = None
    alphabet: int = 0
    zero_code: int | None = None
    codebook: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero_point: torch.Tensor | None = None
    signed: bool = False
    quantizer: BaseQuantizer | None = None  # int: the NNCF quantizer whose levels the codes are

    def metadata_bits(self, codebook_bits: int = 32) -> int:
        """Codebook entries (``codebook_bits`` each, 16 where float16 holds them) or the quantizer's state as
        an archive stores it: its ranges (per channel) and its small integer buffers (``num_bits``, ...)."""
        if self.kind == "codebook":
            assert self.codebook is not None
            exact_half = as_float16(self.codebook) is not None
            return self.codebook.numel() * (min(codebook_bits, 16) if exact_half else codebook_bits)
        if self.kind == "int":
            assert self.quantizer is not None
            return sum(stored_bits(t) for t in self.quantizer.state_dict().values())
        return 0


def ir_bytes(storage: WeightStorage, numel: int) -> int:
    """Bytes an OpenVINO IR spends on the weight: 4- or 8-bit containers plus codebook or scales (fp32)."""
    if storage.kind == "float":
        return numel * storage.bits // 8
    container = 4 if storage.bits <= 4 else 8
    data = (numel * container + 7) // 8
    if storage.kind == "codebook":
        return data + storage.alphabet * 4
    assert storage.scale is not None
    zero = 0 if storage.signed else storage.scale.numel() * 4
    return data + storage.scale.numel() * 4 + zero


def _cluster_codebook(effective: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor | None:
    """The single value each cluster takes in ``effective``, or None if some cluster takes several."""
    flat_index = index.reshape(-1).long()
    flat = effective.reshape(-1)
    codebook = torch.zeros(k, dtype=flat.dtype).scatter_(0, flat_index, flat)
    return codebook if torch.equal(codebook[flat_index], flat) else None


@torch.no_grad()
def int_values(
    quantizer: BaseQuantizer, codes: torch.Tensor, positions: torch.Tensor, shape: tuple[int, ...]
) -> torch.Tensor:
    """The float32 values ``quantizer`` gives the integer ``codes`` at flat ``positions`` of a weight of
    ``shape`` (per-channel ranges along its first axis): each code's bin centre, passed through the quantizer,
    so that the value is exactly the one the model computed (float32 models)."""
    low, high = quantizer.get_input_low_input_high()
    step = ((high - low) / (quantizer.level_high - quantizer.level_low)).reshape(-1).float()
    low = low.reshape(-1).float()
    numel = int(np.prod(shape))
    channel = positions // (numel // low.numel())
    x = torch.zeros(numel, device=low.device)  # where the quantizer is (a model's GPU, an archive's CPU)
    x[positions] = low[channel] + codes.float() * step[channel]
    return quantizer.quantize(x.reshape(shape)).reshape(-1)[positions]


def _int_storage(quantizer: BaseQuantizer, effective: torch.Tensor) -> WeightStorage:
    codes, zero_code = quantizer_codes(quantizer, effective)
    input_low, input_high = quantizer.get_input_low_input_high()
    levels = quantizer.level_high - quantizer.level_low + 1
    step = ((input_high - input_low) / (levels - 1)).detach()
    zero = torch.round(-input_low.detach() / step)
    bits = int(quantizer.num_bits)
    signed = (
        isinstance(quantizer, SymmetricQuantizer)
        and quantizer.signed
        and bool((zero == 1 << (bits - 1)).all())
    )
    return WeightStorage(
        "int",
        bits,
        codes,
        1 << bits,
        zero_code,
        scale=step,
        zero_point=zero,
        signed=signed,
        quantizer=quantizer,
    )


@torch.no_grad()
def weight_storage(
    hooks: list[nn.Module], weight: torch.Tensor, prefer: str = "compact"
) -> tuple[torch.Tensor, WeightStorage]:
    """Effective value of ``weight`` after ``hooks`` and how to code it.

    ``prefer="compact"`` takes codebook indices whenever every cluster maps to one value (fewest bits, for
    statistics and archives); ``prefer="int"`` takes integer levels when the chain ends in a quantizer (so an
    OpenVINO IR computes in int8, cluster-preserving quantization).
    """
    effective = weight.detach()
    shared: WeightHook | None = None
    quantizer: BaseQuantizer | None = None
    for hook in hooks:
        effective = hook(effective)
        if isinstance(hook, WeightHook) and hook.value_codes() is not None:
            shared = hook
        elif isinstance(hook, BaseQuantizer) and hook.is_enabled_quantization():
            quantizer = hook
    # integer levels only where they give back the values: a codebook applied after the quantizer moves
    # them off its grid. Archives and statistics need them exactly (a model computing in float16 / bfloat16 /
    # float64 rounds them differently: stored as floats); an IR (float32) within 1% of a step.
    int_storage = _int_storage(quantizer, effective) if quantizer is not None else None
    if int_storage is not None and not _on_grid(int_storage, effective, exact=prefer != "int"):
        int_storage = None
    if int_storage is not None and (prefer == "int" or shared is None):
        return effective, int_storage
    if shared is not None:
        index = shared.value_codes()
        assert index is not None
        k = shared.codebook_entries()
        codebook = _cluster_codebook(effective, index, k)
        if codebook is not None:
            zeros = torch.nonzero(codebook == 0).reshape(-1)
            zero_code = int(zeros[0]) if zeros.numel() else None
            bits = max(int(k - 1).bit_length(), 1)
            return effective, WeightStorage("codebook", bits, index.long(), k, zero_code, codebook=codebook)
        if int_storage is not None:
            return effective, int_storage
    return effective, WeightStorage("float", effective.element_size() * 8)


def _on_grid(storage: WeightStorage, effective: torch.Tensor, exact: bool) -> bool:
    """Whether the int codes give back ``effective``: exactly, or within 1% of a step (and dtype rounding)."""
    assert storage.quantizer is not None and storage.codes is not None and storage.scale is not None
    flat = effective.reshape(-1)
    positions = torch.arange(flat.numel(), device=flat.device)
    decoded = int_values(storage.quantizer, storage.codes.reshape(-1), positions, tuple(effective.shape))
    if exact:
        return torch.equal(decoded.to(flat.dtype), flat)
    if not flat.numel():
        return True
    step = storage.scale.reshape(-1, 1).float()
    value = flat.float().reshape(step.shape[0], -1)
    # 1% of a step, plus the rounding of the model's dtype (a float16 weight is off by up to half its ulp)
    tolerance = 0.01 * step + value.abs() * torch.finfo(flat.dtype).eps
    return bool(((decoded.reshape(value.shape) - value).abs() <= tolerance).all())


# -- positions -------------------------------------------------------------------------------------------
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


def positions_from_codes(codes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_gaps`: flat position of every entry (fillers included)."""
    return torch.cumsum(codes + 1, 0) - 1


@dataclass(frozen=True)
class SparseLayout:
    """The cheapest fixed-width way to store a tensor: dense, or relative-index CSR with the best width."""

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


def storage_layout(
    effective: torch.Tensor, storage: WeightStorage, index_bits: int | None = None
) -> SparseLayout:
    """Best layout; CSR needs a code for the zeros of its filler entries."""
    sparse_ok = storage.kind == "float" or storage.zero_code is not None
    return best_layout(effective, storage.bits, index_bits, allow_sparse=sparse_ok)


# -- streams ---------------------------------------------------------------------------------------------
def raw_array(tensor: torch.Tensor) -> np.ndarray:
    """``tensor`` as a numpy array of the same bytes; bfloat16, which numpy lacks, as its int16 bits."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy()


@dataclass
class Stream:
    """One sequence of symbols to store: value codes, relative-index codes, or raw float bits."""

    name: str
    # int64 codes, or raw values as stored: float16, or the weight's dtype (bfloat16 as its int16 bits)
    symbols: np.ndarray
    alphabet: int  # 0 for raw float values
    fixed_bits: int  # bits per symbol without entropy coding

    @property
    def is_raw(self) -> bool:
        return self.alphabet == 0

    def huffman(self) -> HuffmanSize | None:
        return None if self.is_raw else huffman_size(np.bincount(self.symbols, minlength=self.alphabet))

    @property
    def fixed_size(self) -> int:
        return int(self.symbols.size) * self.fixed_bits

    def stored_bits(self) -> tuple[str, int, float]:
        """(coding, bits, entropy bound): Huffman where it is smaller than fixed width."""
        size = self.huffman()
        if size is None:
            return "fixed", self.fixed_size, float(self.fixed_size)
        if size.total_bits < self.fixed_size:
            return "huffman", size.total_bits, size.entropy_bits
        return "fixed", self.fixed_size, size.entropy_bits


def layer_streams(effective: torch.Tensor, storage: WeightStorage, layout: SparseLayout) -> list[Stream]:
    """The symbol streams of a weight under ``layout``: relative indices (CSR only), then values."""
    streams: list[Stream] = []
    flat = effective.reshape(-1)
    if layout.format == "csr":
        gap_codes, is_real = split_gaps(relative_gaps(effective), layout.index_bits)
        streams.append(Stream("indices", gap_codes.numpy(), 1 << layout.index_bits, layout.index_bits))
        nonzero = flat != 0
        if storage.codes is None:
            values = torch.zeros(gap_codes.numel(), dtype=flat.dtype)
            values[is_real] = flat[nonzero]
        else:
            assert storage.zero_code is not None
            values = torch.full((gap_codes.numel(),), storage.zero_code, dtype=torch.long)
            values[is_real] = storage.codes.reshape(-1)[nonzero]
    else:
        values = flat if storage.codes is None else storage.codes.reshape(-1)
    if storage.codes is None:  # raw floats: in float16 where that holds them (an archive stores them so)
        half = as_float16(values)
        raw = raw_array(values) if half is None else half.numpy()
        streams.append(Stream("values", raw, 0, 16 if half is not None else storage.bits))
    else:
        streams.append(Stream("values", values.numpy().astype(np.int64), storage.alphabet, storage.bits))
    return streams
