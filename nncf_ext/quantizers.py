"""NNCF's own fake quantizers (``SymmetricQuantizer`` / ``AsymmetricQuantizer``), built and initialised
for nncf-ext's algorithms: exactly ``2 ** bits`` levels (no narrow range, so NNCF's strip can turn them into
int8 / int4 weights), per-channel or per-tensor, min-max or MSE-optimal initial ranges, trainable ranges.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from nncf.common.quantization.structs import QuantizationScheme
from nncf.torch.quantization.layers import (
    AsymmetricQuantizer,
    BaseQuantizer,
    PTQuantizerSpec,
    SymmetricQuantizer,
)
from torch import nn

MODES = ("symmetric", "asymmetric")


def make_quantizer(
    bits: int, mode: str, scale_shape: tuple[int, ...], *, signed: bool | None, is_weights: bool
) -> BaseQuantizer:
    spec = PTQuantizerSpec(
        num_bits=bits,
        mode=QuantizationScheme.SYMMETRIC if mode == "symmetric" else QuantizationScheme.ASYMMETRIC,
        signedness_to_force=signed,
        narrow_range=False,
        half_range=False,
        scale_shape=scale_shape,
        logarithm_scale=False,
        is_quantized_on_export=is_weights,
    )
    return SymmetricQuantizer(spec) if mode == "symmetric" else AsymmetricQuantizer(spec)


def weight_scale_shape(shape: tuple[int, ...], per_channel: bool) -> tuple[int, ...]:
    """Per output channel (axis 0, as NNCF does for conv and linear weights) or a single scale."""
    if not per_channel or len(shape) < 2:
        return (1,)
    return (shape[0],) + (1,) * (len(shape) - 1)


def make_weight_quantizer(weight: torch.Tensor, bits: int, mode: str, per_channel: bool) -> BaseQuantizer:
    shape = weight_scale_shape(tuple(weight.shape), per_channel)
    return make_quantizer(bits, mode, shape, signed=True if mode == "symmetric" else None, is_weights=True)


def _reduce_dims(x: torch.Tensor, scale_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (
        tuple(i for i, s in enumerate(scale_shape) if s == 1)
        if len(scale_shape) == x.dim()
        else tuple(range(x.dim()))
    )


@torch.no_grad()
def set_range(quantizer: BaseQuantizer, low: torch.Tensor, high: torch.Tensor) -> None:
    """Make the quantizer cover ``[low, high]`` (tensors broadcastable to its scale shape)."""
    shape = quantizer.scale_shape
    low = low.reshape(-1).reshape(shape) if low.numel() > 1 else low.reshape(1).expand(shape)
    high = high.reshape(-1).reshape(shape) if high.numel() > 1 else high.reshape(1).expand(shape)
    if isinstance(quantizer, SymmetricQuantizer):
        signed = bool((low < 0).any()) if quantizer._signedness_to_force is None else quantizer.signed
        quantizer.signed = signed
        quantizer.scale.data.copy_(torch.maximum(high.abs(), low.abs()).clamp(min=1e-8))
    else:
        assert isinstance(quantizer, AsymmetricQuantizer)
        low = torch.minimum(low, torch.zeros_like(low))
        high = torch.maximum(high, torch.zeros_like(high))
        quantizer.input_low.data.copy_(low)
        quantizer.input_range.data.copy_((high - low).clamp(min=1e-8))


@torch.no_grad()
def init_weight_range(quantizer: BaseQuantizer, weight: torch.Tensor, method: str = "minmax") -> None:
    """Initial range: the weights' min / max, or the clipping of min / max with the least squared error."""
    dims = _reduce_dims(weight, quantizer.scale_shape)
    low, high = weight.amin(dim=dims), weight.amax(dim=dims)
    if method == "minmax":
        set_range(quantizer, low, high)
        return
    best_err = torch.full_like(low, float("inf"))
    best_ratio = torch.ones_like(low)
    for ratio in torch.linspace(0.2, 1.0, 33).tolist():
        set_range(quantizer, low * ratio, high * ratio)
        err = (quantizer.quantize(weight) - weight).pow(2).sum(dim=dims)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_ratio = torch.where(better, torch.full_like(best_ratio, ratio), best_ratio)
    set_range(quantizer, low * best_ratio, high * best_ratio)


@torch.no_grad()
def quantizer_codes(quantizer: BaseQuantizer, quantized: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """Integer level (0 .. 2**bits - 1) of each already-quantized value, and the level of zero if exact."""
    input_low, input_high = quantizer.get_input_low_input_high()
    levels = quantizer.level_high - quantizer.level_low + 1
    step = (input_high - input_low) / (levels - 1)
    codes = torch.round((quantized - input_low) / step).clamp_(0, levels - 1).to(torch.int64)
    zero = torch.round(-input_low / step)
    exact = bool((quantizer.quantize(torch.zeros_like(input_low)) == 0).all())
    same = bool((zero == zero.reshape(-1)[0]).all())
    return codes, int(zero.reshape(-1)[0]) if exact and same else None


LSQ_ELEMENTS = "_nncf_ext_lsq_elements"  # quantizer attribute: N of the LSQ gradient scale


def lsq_gradient_factor(quantizer: BaseQuantizer, param: str) -> float:
    """What the gradient of the quantizer's parameter ``param`` is multiplied by so that the step size ``s``
    trains as in LSQ: ``ds = -lr * g * dL/ds`` with ``g = 1 / sqrt(N * Qp)``.

    NNCF learns ranges, not ``s``. The symmetric ``scale`` is ``Qp * s``, and NNCF's gradient for it from an
    input inside the range is that of the range ``(levels - 1) * s``: with this factor such inputs move ``s``
    exactly as in LSQ, and a clipped input (whose NNCF gradient is the true one) by ``(levels - 1) / Qp``
    (about 2) times as much. The asymmetric ``input_range`` is ``(levels - 1) * s`` (NNCF's alignment of zero
    to a level aside); ``input_low`` is an offset in input units, which LSQ+ scales by ``g`` alone. A
    constant factor is normalised away by Adam while the gradients stay well above its ``eps``; under SGD it
    sets how fast ranges train.
    """
    n = getattr(quantizer, LSQ_ELEMENTS)
    qp = max(int(quantizer.level_high), 1)
    steps = int(quantizer.level_high) - int(quantizer.level_low)  # levels - 1
    g = 1.0 / (n * qp) ** 0.5
    if param == "input_low":
        return g
    if isinstance(quantizer, SymmetricQuantizer):
        return g * qp * steps
    return g * steps * steps


def _lsq_scale(quantizer: BaseQuantizer, param: str, grad: torch.Tensor) -> torch.Tensor:
    return grad * lsq_gradient_factor(quantizer, param)


def _place_lsq_hooks(quantizer: nn.Module, args: Any) -> None:
    """Forward pre-hook: make sure every trainable range parameter of ``quantizer`` carries the LSQ gradient
    hook.

    Tensor hooks do not survive ``copy.deepcopy`` (nor pickling); the module's forward pre-hooks and
    attributes do, so a copied quantizer puts the hook back on its own parameters at its first forward. A
    frozen range (``requires_grad`` off) gets its hook at the first forward after it is unfrozen.
    """
    for name, param in quantizer.named_parameters():
        if not param.dtype.is_floating_point or not param.requires_grad:
            continue
        hooks = (param._backward_hooks or {}).values()
        if not any(isinstance(h, partial) and h.func is _lsq_scale and h.args[0] is quantizer for h in hooks):
            param.register_hook(
                partial(_lsq_scale, quantizer, name.removesuffix("_param_storage").lstrip("_"))
            )


def scale_range_gradients(quantizer: BaseQuantizer, elements_per_scale: int) -> None:
    """LSQ (Esser et al. 2020): the step size trains with its gradient scaled by ``g = 1 / sqrt(N * Qp)``
    (on NNCF's range parameters, see :func:`lsq_gradient_factor`).

    ``N`` is the number of elements sharing one scale, ``Qp`` the largest positive level, read when the
    gradient arrives: an activation quantizer's sign (``Qp`` 2^(b-1) - 1 or 2^b - 1) is set by its range
    initialisation, after this hook is placed. The scale stays with copies of the quantizer (and of the
    model that holds it).
    """
    first = not hasattr(quantizer, LSQ_ELEMENTS)
    setattr(quantizer, LSQ_ELEMENTS, max(elements_per_scale, 1))
    if first:
        quantizer.register_forward_pre_hook(_place_lsq_hooks)
