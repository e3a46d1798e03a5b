"""Canonical Huffman coding of integer symbols, vectorised with numpy.

The stream is cut into blocks of ``BLOCK`` symbols whose bit offsets are stored, so decoding advances all
blocks in lock-step (one vectorised table lookup per symbol position) instead of one symbol at a time.
Code lengths are limited to ``MAX_LENGTH`` bits so that decoding is a single table lookup.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

MAX_LENGTH = 20
BLOCK = 4096
OFFSET_BITS = 40  # bits to store one block offset


def code_lengths(freqs: np.ndarray, max_length: int = MAX_LENGTH) -> np.ndarray:
    """Huffman code length of each symbol (0 for symbols that never occur), at most ``max_length``."""
    freqs = np.asarray(freqs, dtype=np.int64)
    present = np.flatnonzero(freqs)
    lengths = np.zeros(freqs.size, dtype=np.uint8)
    if present.size <= 1:  # an empty stream needs no code, a single symbol a 1-bit one
        lengths[present] = 1
        return lengths
    if present.size > 1 << max_length:  # flattening would never fit them: it would loop forever
        raise ValueError(f"{present.size} symbols cannot all have codes of at most {max_length} bits")
    f = freqs[present].copy()
    while True:
        depth = _huffman_depths(f)
        if depth.max() <= max_length:
            lengths[present] = depth
            return lengths
        f = np.maximum(f >> 1, 1)  # flatten the distribution until the longest code fits


def _huffman_depths(freqs: np.ndarray) -> np.ndarray:
    heap: list[tuple[int, int, int]] = [(int(f), i, -1) for i, f in enumerate(freqs)]
    heapq.heapify(heap)
    parent = np.full(2 * len(freqs), -1, dtype=np.int64)
    nxt = len(freqs)
    while len(heap) > 1:
        f1, a, _ = heapq.heappop(heap)
        f2, b, _ = heapq.heappop(heap)
        parent[a] = parent[b] = nxt
        heapq.heappush(heap, (f1 + f2, nxt, -1))
        nxt += 1
    depth = np.zeros(nxt, dtype=np.int64)
    for node in range(nxt - 2, -1, -1):  # parents have larger ids than children
        depth[node] = depth[parent[node]] + 1
    return depth[: len(freqs)]


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (as integers, MSB first) for the given code lengths."""
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    codes = np.zeros(lengths.size, dtype=np.uint64)
    code = 0
    prev = int(lengths[order[0]]) if order.size else 0
    for i, sym in enumerate(order):
        length = int(lengths[sym])
        if i:
            code = (code + 1) << (length - prev)
        codes[sym] = code
        prev = length
    return codes


def entropy_bits(freqs: np.ndarray) -> float:
    """Shannon bound: the fewest bits any symbol-by-symbol code can spend on this histogram."""
    f = np.asarray(freqs, dtype=np.float64)
    f = f[f > 0]
    n = f.sum()
    return float(-(f * np.log2(f / n)).sum()) if n else 0.0


@dataclass(frozen=True)
class HuffmanSize:
    """Exact size of an encoded stream, in bits, and the entropy bound of its payload."""

    payload_bits: int
    table_bits: int
    offset_bits: int
    entropy_bits: float

    @property
    def total_bits(self) -> int:
        return self.payload_bits + self.table_bits + self.offset_bits


def table_bits(alphabet: int) -> int:
    """The table is the code length of every symbol of the alphabet, 5 bits each."""
    return 5 * alphabet


def huffman_size(freqs: np.ndarray) -> HuffmanSize:
    """Size of :func:`encode`'s output for a stream with this histogram, without encoding it."""
    freqs = np.asarray(freqs, dtype=np.int64)
    lengths = code_lengths(freqs)
    n = int(freqs.sum())
    blocks = math.ceil(n / BLOCK)
    return HuffmanSize(
        payload_bits=int((freqs * lengths).sum()),
        table_bits=table_bits(freqs.size),
        offset_bits=blocks * OFFSET_BITS,
        entropy_bits=entropy_bits(freqs),
    )


@dataclass
class Encoded:
    data: bytes
    lengths: np.ndarray  # code length per symbol of the alphabet
    block_offsets: np.ndarray  # bit offset of each block of BLOCK symbols
    count: int  # number of symbols
    payload_bits: int


def encode(symbols: np.ndarray, alphabet: int, chunk: int = 1 << 20) -> Encoded:
    """Huffman-encode non-negative integer ``symbols`` < ``alphabet``."""
    symbols = np.asarray(symbols).reshape(-1).astype(np.int64, copy=False)
    freqs = np.bincount(symbols, minlength=alphabet)
    if freqs.size > alphabet:
        raise ValueError(f"symbol {int(symbols.max())} is outside the alphabet of {alphabet}")
    lengths = code_lengths(freqs)
    codes = canonical_codes(lengths)
    sym_len = lengths[symbols].astype(np.int64)
    starts = np.cumsum(sym_len) - sym_len
    max_len = int(lengths.max()) if lengths.size else 0
    shifts = np.arange(max_len - 1, -1, -1, dtype=np.int64)  # MSB first
    pieces: list[bytes] = []
    carry = np.zeros(0, dtype=np.uint8)
    for lo in range(0, symbols.size, chunk):
        sym = symbols[lo : lo + chunk]
        ln = sym_len[lo : lo + chunk, None]
        # row i holds code i right-aligned in max_len bits; keep its last len_i columns, row-major
        bits = (codes[sym][:, None] >> shifts.astype(np.uint64)) & np.uint64(1)
        valid = np.arange(max_len)[None, :] >= (max_len - ln)
        stream = np.concatenate([carry, bits[valid].astype(np.uint8)])
        whole = stream.size - stream.size % 8
        pieces.append(np.packbits(stream[:whole]).tobytes())
        carry = stream[whole:]
    pieces.append(np.packbits(carry).tobytes())
    total = int(sym_len.sum())
    return Encoded(b"".join(pieces), lengths, starts[::BLOCK].copy(), symbols.size, total)


def decode(encoded: Encoded) -> np.ndarray:
    """Inverse of :func:`encode`; all blocks are decoded in lock-step."""
    lengths = encoded.lengths.astype(np.int64)
    n = encoded.count
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    max_len = int(lengths.max())
    codes = canonical_codes(lengths)
    # lookup table over max_len-bit windows: every window starting with a code maps to its symbol
    table_sym = np.zeros(1 << max_len, dtype=np.int64)
    table_len = np.zeros(1 << max_len, dtype=np.int64)
    for sym in np.flatnonzero(lengths):
        pad = max_len - int(lengths[sym])
        lo = int(codes[sym]) << pad
        table_sym[lo : lo + (1 << pad)] = sym
        table_len[lo : lo + (1 << pad)] = lengths[sym]
    data = np.frombuffer(encoded.data + b"\0\0\0\0", dtype=np.uint8).astype(np.uint64)
    pos = encoded.block_offsets.astype(np.int64).copy()
    out = np.zeros(math.ceil(n / BLOCK) * BLOCK, dtype=np.int64).reshape(-1, BLOCK)
    last = data.size - 4
    for i in range(BLOCK):
        byte = np.minimum(pos >> 3, last)  # past-the-end reads only happen for the padding of the last block
        word = (
            (data[byte] << np.uint64(24))
            | (data[byte + 1] << np.uint64(16))
            | (data[byte + 2] << np.uint64(8))
        )
        word |= data[byte + 3]
        window = (word >> (np.uint64(32 - max_len) - (pos & 7).astype(np.uint64))) & np.uint64(
            (1 << max_len) - 1
        )
        sym = table_sym[window.astype(np.int64)]
        out[:, i] = sym
        pos += table_len[window.astype(np.int64)]
    return out.reshape(-1)[:n]
