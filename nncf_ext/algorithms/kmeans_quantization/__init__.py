from nncf_ext.algorithms.kmeans_quantization.algo import KMeansQuantization, KMeansQuantizationConfig
from nncf_ext.algorithms.kmeans_quantization.kmeans import KMeansResult, kmeans_1d
from nncf_ext.algorithms.kmeans_quantization.modules import CodebookLookup, KMeansQuantizer

__all__ = [
    "CodebookLookup",
    "KMeansQuantization",
    "KMeansQuantizationConfig",
    "KMeansQuantizer",
    "KMeansResult",
    "kmeans_1d",
]
