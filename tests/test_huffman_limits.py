"""Length-limited code lengths: a complete prefix code, optimal when the limit does not bind, and close to
the package-merge optimum when it does (the flattening is a heuristic; its docstring claims only the limit)."""

from __future__ import annotations

import heapq
import math

import numpy as np

from nncf_ext.huffman import code_lengths


def huffman_cost(freqs: np.ndarray) -> int:
    """Bits of an optimal unlimited prefix code: the sum of all merged weights."""
    heap = [int(f) for f in freqs if f > 0]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        cost += merged
        heapq.heappush(heap, merged)
    return cost


def package_merge_cost(freqs: np.ndarray, max_length: int) -> int:
    """Bits of an optimal prefix code with codes of at most ``max_length`` bits (Larmore & Hirschberg)."""
    leaves = sorted(int(f) for f in freqs if f > 0)
    items = leaves
    for _ in range(max_length - 1):
        packages = [items[k] + items[k + 1] for k in range(0, len(items) - 1, 2)]
        items = sorted(leaves + packages)
    return sum(items[: 2 * len(leaves) - 2])


def skewed(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy-tailed counts, so the unlimited Huffman tree is deep."""
    return np.maximum(1, (rng.pareto(0.7, n) * 10).astype(np.int64))


def cost(freqs: np.ndarray, max_length: int) -> int:
    return int((freqs * code_lengths(freqs, max_length).astype(np.int64)).sum())


def test_the_reference_is_huffman_when_nothing_binds() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        freqs = skewed(rng, int(rng.integers(2, 20)))
        assert package_merge_cost(freqs, len(freqs) - 1) == huffman_cost(freqs)
    assert package_merge_cost(np.array([1, 1, 2, 4]), 2) == 16  # four 2-bit codes


def test_lengths_are_optimal_when_the_limit_does_not_bind() -> None:
    rng = np.random.default_rng(2)
    checked = 0
    for _ in range(200):
        freqs = skewed(rng, int(rng.integers(2, 30)))
        unlimited = code_lengths(freqs, 64)
        deepest = int(unlimited.max())
        if deepest <= math.ceil(math.log2(freqs.size)):
            continue  # a limit of `deepest` is then a balanced code: nothing to distinguish
        for max_length in (deepest, deepest + 3):  # a limit met exactly must not flatten
            assert code_lengths(freqs, max_length).tolist() == unlimited.tolist()
            assert cost(freqs, max_length) == huffman_cost(freqs)
        checked += 1
    assert checked > 100


def test_limited_lengths_form_a_complete_prefix_code() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        max_length = int(rng.integers(math.ceil(math.log2(n)), 12))
        freqs = skewed(rng, n) * (rng.random(n) < 0.8)  # some symbols never occur
        lengths = code_lengths(freqs, max_length).astype(np.int64)
        present = freqs > 0
        assert (lengths[~present] == 0).all()
        if present.sum() < 2:
            continue
        assert lengths[present].min() >= 1 and lengths.max() <= max_length
        assert (2.0 ** -lengths[present]).sum() == 1.0  # Kraft with equality: a full tree, no bit wasted


def test_flattening_stays_close_to_the_length_limited_optimum() -> None:
    """Not optimal (about 1% more bits on average on these deep trees, at worst ~40%), never below the
    optimum; an empirical guard against a worse flattening."""
    rng = np.random.default_rng(3)
    excess = []
    for _ in range(300):
        n = int(rng.integers(2, 33))
        max_length = int(rng.integers(max(1, math.ceil(math.log2(n))), 10))
        freqs = skewed(rng, n)
        optimum = package_merge_cost(freqs, max_length)
        got = cost(freqs, max_length)
        assert got >= optimum
        if code_lengths(freqs, 64).max() > max_length:
            excess.append(got / optimum - 1)
    assert len(excess) > 150
    assert np.mean(excess) < 0.025 and np.median(excess) < 0.005
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    freqs = np.array(fib)  # the default limit (20) binds on this 39-deep tree
    assert package_merge_cost(freqs, 20) <= cost(freqs, 20) <= 1.0001 * package_merge_cost(freqs, 20)
