"""Folding nncf-ext's weight hooks into plain weights, remembering how each weight is to be stored.

``strip_for_export`` returns a copy of the model whose weights carry their effective values (masks,
codebooks and weight quantizers applied) and a :class:`~nncf_ext.storage.WeightStorage` per compressed
weight that tells the OpenVINO writer how to store it: codebook indices, integer codes with scales, or
floats (integer codes win when the chain ends in a quantizer, so the IR computes in int8).
Activation quantizers stay and are turned into FakeQuantize operations by NNCF's own ``strip``.
"""

from __future__ import annotations

import copy
from typing import Any

import nncf
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
    for hook_name, hook in storage.named_hooks():
        if not isinstance(hook, BaseQuantizer):
            raise ExportError(f"export does not know the hook {type(hook).__name__} at {hook_name}")
    if not storage.is_empty():  # activation quantizers -> torch FakeQuantize -> OpenVINO FakeQuantize
        stripped = nncf.strip(
            stripped, do_copy=False, strip_format=nncf.StripFormat.NATIVE, example_input=example_input
        )
    return stripped, storages
