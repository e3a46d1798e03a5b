"""Compression algorithms. Importing this package registers every algorithm under its config name."""

from nncf_ext.algorithms import kmeans_quantization, l1_sparsity, threshold_pruning, uniform_quantization
from nncf_ext.algorithms.base import ALGORITHMS, AlgorithmConfig, CompressionAlgorithm, register_algorithm

__all__ = [
    "ALGORITHMS",
    "AlgorithmConfig",
    "CompressionAlgorithm",
    "kmeans_quantization",
    "l1_sparsity",
    "register_algorithm",
    "threshold_pruning",
    "uniform_quantization",
]
