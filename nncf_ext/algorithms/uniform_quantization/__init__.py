from nncf_ext.algorithms.uniform_quantization.algo import UniformQuantization, UniformQuantizationConfig

__all__ = ["UniformQuantization", "UniformQuantizationConfig"]
