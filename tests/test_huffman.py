import numpy as np
import pytest

from nncf_ext.huffman import (
    BLOCK,
    MAX_LENGTH,
    code_lengths,
    decode,
    encode,
    entropy_bits,
    huffman_size,
    table_bits,
)


@pytest.mark.parametrize(
    ("alphabet", "n"), [(256, 50_000), (32, 3 * BLOCK + 17), (2, 10), (1, 5), (4096, 20_000)]
)
def test_round_trip_and_predicted_size(alphabet: int, n: int) -> None:
    rng = np.random.default_rng(alphabet)
    symbols = rng.choice(alphabet, size=n, p=rng.dirichlet(np.full(alphabet, 0.5)))
    encoded = encode(symbols, alphabet, chunk=4099)
    assert np.array_equal(decode(encoded), symbols)
    size = huffman_size(np.bincount(symbols, minlength=alphabet))
    assert size.payload_bits == encoded.payload_bits
    assert len(encoded.data) == (encoded.payload_bits + 7) // 8


def test_size_is_within_one_percent_of_entropy_plus_table() -> None:
    rng = np.random.default_rng(0)
    p = np.exp(-np.arange(256) / 40.0)
    symbols = rng.choice(256, size=200_000, p=p / p.sum())
    encoded = encode(symbols, 256)
    bound = entropy_bits(np.bincount(symbols, minlength=256)) + table_bits(256)
    assert bound <= len(encoded.data) * 8 <= 1.01 * bound


def test_lengths_are_optimal_and_limited() -> None:
    assert code_lengths(np.array([1, 1, 2, 4])).tolist() == [3, 3, 2, 1]
    assert code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    assert code_lengths(np.array(fib), max_length=64).max() == 39  # Fibonacci frequencies: a degenerate tree
    lengths = code_lengths(np.array(fib))
    assert lengths.max() <= MAX_LENGTH
    assert (2.0 ** -lengths.astype(float)).sum() <= 1.0  # still a prefix code (Kraft)


def test_an_empty_stream_costs_nothing_and_round_trips() -> None:
    freqs = np.zeros(8, dtype=np.int64)
    assert code_lengths(freqs).tolist() == [0] * 8
    size = huffman_size(freqs)
    assert size.payload_bits == size.offset_bits == 0 and size.entropy_bits == 0.0
    encoded = encode(np.zeros(0, dtype=np.int64), 8)
    assert encoded.data == b"" and encoded.payload_bits == 0
    assert decode(encoded).size == 0


def test_more_symbols_than_codes_of_max_length_is_refused() -> None:
    # 5 symbols cannot all get codes of at most 2 bits: this looped forever
    with pytest.raises(ValueError, match="5 symbols"):
        code_lengths(np.ones(5, dtype=np.int64), max_length=2)
    assert code_lengths(np.ones(4, dtype=np.int64), max_length=2).tolist() == [2, 2, 2, 2]


def test_the_code_table_costs_what_the_archive_stores() -> None:
    """5 bits per symbol of the alphabet, the width of the archive's lengths blob."""
    from nncf_ext.export.archive import pack_fixed

    assert table_bits(16) == 80
    encoded = encode(np.arange(16).repeat(3), 16)
    assert len(pack_fixed(encoded.lengths, 5)) == (table_bits(16) + 7) // 8
