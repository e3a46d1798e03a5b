"""Folding nncf-ext's weight hooks into plain weights, remembering how each weight is to be stored.

``strip_for_export`` returns a copy of the model whose weights carry their effective values (masks,
codebooks and weight quantizers applied) and a :class:`~nncf_ext.storage.WeightStorage` per compressed
weight that tells the OpenVINO writer how to store it: codebook indices, integer codes with scales, or
floats (integer codes win when the chain ends in a quantizer, so the IR computes in int8).
Activation quantizers become ``torch.fake_quantize_per_tensor_affine``, i.e. OpenVINO FakeQuantize.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from nncf.torch.function_hook.pruning.magnitude.modules import UnstructuredPruningMask
from nncf.torch.function_hook.wrapper import get_hook_storage, is_wrapped
from nncf.torch.quantization.layers import AsymmetricQuantizer, BaseQuantizer, SymmetricQuantizer
from torch import nn

from nncf_ext.algorithms.kmeans_quantization.modules import KMeansQuantizer
from nncf_ext.algorithms.threshold_pruning.modules import ThresholdPruningMask
from nncf_ext.errors import ExportError
from nncf_ext.hooks import weight_hooks
from nncf_ext.model import get_weight
from nncf_ext.storage import WeightStorage, weight_storage

KNOWN_WEIGHT_HOOKS = (
    ThresholdPruningMask,
    UnstructuredPruningMask,
    KMeansQuantizer,
    SymmetricQuantizer,
    AsymmetricQuantizer,
)


def check_hooks(hooks: list[nn.Module]) -> None:
    for hook in hooks:
        if not isinstance(hook, KNOWN_WEIGHT_HOOKS):
            raise ExportError(f"export does not know the hook {type(hook).__module__}.{type(hook).__name__}")


def strip_for_export(model: nn.Module, example_input: Any) -> tuple[nn.Module, dict[str, WeightStorage]]:
    """A deep copy of ``model`` with weight hooks folded into the weights, and how to store each weight."""
    stripped = copy.deepcopy(model)
    stripped.eval()
    storages: dict[str, WeightStorage] = {}
    if not is_wrapped(stripped):
        return stripped, storages
    storage = get_hook_storage(stripped)
    hooks_by_weight = weight_hooks(stripped)
    for name, hooks in hooks_by_weight.items():
        check_hooks(hooks)
        param = get_weight(stripped, name)
        effective, info = weight_storage(hooks, param, prefer="int")
        param.data = effective.to(param.dtype).clone()
        param.requires_grad_(False)
        storages[name] = info
    weight_hook_ids = {id(h) for hooks in hooks_by_weight.values() for h in hooks}
    for hook_name, hook in list(storage.named_hooks(remove_duplicate=False)):
        if id(hook) in weight_hook_ids:
            storage.delete_hook(hook_name)
    for hook_name, hook in list(storage.named_hooks()):
        if isinstance(hook, TorchFakeQuantize):  # stripped before: stripping is idempotent
            continue
        if not isinstance(hook, BaseQuantizer):
            raise ExportError(f"export does not know the hook {type(hook).__name__} at {hook_name}")
        # activation quantizer -> torch fake_quantize -> OpenVINO FakeQuantize, at any bit-width
        storage.set_submodule(hook_name, TorchFakeQuantize.from_quantizer(hook))
    return stripped, storages


class TorchFakeQuantize(nn.Module):
    """An NNCF quantizer as ``torch.fake_quantize_per_{tensor,channel}_affine`` (NNCF converts only 8 bits).

    ``axis`` is None for a per-tensor quantizer, else the channel axis of the per-channel ``scale``.
    """

    def __init__(
        self,
        scale: torch.Tensor,
        zero_point: torch.Tensor,
        quant_min: int,
        quant_max: int,
        axis: int | None = None,
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max, self.axis = quant_min, quant_max, axis
        self.register_buffer("scale", scale.detach().reshape(-1).float().clone())
        self.register_buffer("zero_point", zero_point.detach().reshape(-1).round().int().clone())

    @classmethod
    def from_quantizer(cls, quantizer: BaseQuantizer) -> TorchFakeQuantize:
        if not quantizer.is_enabled_quantization():  # not started yet: identity (quant_min == quant_max)
            return cls(torch.ones(1), torch.zeros(1), 0, 0)
        level_low, level_high, scale, zero_point = quantizer.get_parameters_for_torch_fq()
        axis = None
        if quantizer.per_channel:
            shape = list(quantizer.scale_shape)
            wide = [i for i, n in enumerate(shape) if n > 1]
            if len(wide) > 1:
                raise ExportError(f"a quantizer with scale shape {shape} has more than one channel axis")
            axis = wide[0] if wide else 0
        return cls(scale, zero_point, int(level_low), int(level_high), axis)

    scale: torch.Tensor
    zero_point: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_min == self.quant_max:
            return x
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, float(self.scale[0]), int(self.zero_point[0]), self.quant_min, self.quant_max
            )
        return torch.fake_quantize_per_channel_affine(
            x, self.scale, self.zero_point, self.axis, self.quant_min, self.quant_max
        )
