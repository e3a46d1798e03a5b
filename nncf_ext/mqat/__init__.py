"""MQAT: modular gradated mixed-precision quantization-aware training (Javed et al., TMLR 2024), with
ILP bit allocation and the LSQ / HAWQ-V3 baselines in the same framework."""

from nncf_ext.mqat.ilp import ExtraBudget, allocate_bits
from nncf_ext.mqat.sensitivity import (
    SensitivityTable,
    hessian_sensitivity,
    hessian_traces,
    measure_sensitivity,
    quantized_weight,
    weights_quantized,
)
from nncf_ext.mqat.spec import ModuleSpec, module_sizes, resolve_modules

__all__ = [
    "ExtraBudget",
    "ModuleSpec",
    "SensitivityTable",
    "allocate_bits",
    "hessian_sensitivity",
    "hessian_traces",
    "measure_sensitivity",
    "module_sizes",
    "quantized_weight",
    "resolve_modules",
    "weights_quantized",
]
