"""Compression algorithms. Importing this package registers every algorithm under its config name."""

from nncf_ext.algorithms import kmeans_quantization, l1_sparsity, threshold_pruning, uniform_quantization
from nncf_ext.algorithms.base import (
    ALGORITHMS,
    AlgorithmConfig,
    CompressionAlgorithm,
    algorithm_class,
    register_algorithm,
)
from nncf_ext.mqat import algo as mqat  # last: it builds on uniform_quantization

__all__ = [
    "ALGORITHMS",
    "AlgorithmConfig",
    "CompressionAlgorithm",
    "algorithm_class",
    "kmeans_quantization",
    "l1_sparsity",
    "mqat",
    "register_algorithm",
    "threshold_pruning",
    "uniform_quantization",
]
