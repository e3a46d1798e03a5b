"""The hook modules nncf-ext places on weight constants, and helpers to read them back from a model.

Every weight-compression hook (ours and NNCF's quantizers placed by us) is a post-hook at port 0 of a
weight constant, the placement NNCF's own ``strip`` expects. Hooks of one weight run in config order.
"""

from __future__ import annotations

from typing import Any

import torch
from nncf.torch.function_hook.hook_storage import decode_hook_name
from nncf.torch.function_hook.wrapper import get_hook_storage, is_wrapped
from nncf.torch.layer_utils import StatefulModuleInterface
from nncf.torch.quantization.layers import BaseQuantizer
from torch import nn


class WeightHook(nn.Module, StatefulModuleInterface):
    """Base of nncf-ext weight hooks: a module applied to a weight; its state lives in buffers."""

    def storage_bits(self) -> int | None:
        """Bits per stored weight value after this hook, or None when the hook keeps the precision."""
        return None

    def codebook_entries(self) -> int:
        """Number of shared values (centroids) stored beside the weights; 0 when there is no codebook."""
        return 0

    def value_codes(self) -> torch.Tensor | None:
        """The integer symbol stored for each weight (a codebook index), or None when values are raw."""
        return None

    def effective_codebook(self) -> torch.Tensor | None:
        """The values the symbols of :meth:`value_codes` stand for."""
        return None

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_config(cls, state: dict[str, Any]) -> WeightHook:
        return cls(**state)


def weight_hooks(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Post-hooks at port 0 of each weight constant, in execution order, keyed by constant name."""
    if not is_wrapped(model):
        return {}
    tensors = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    out: dict[str, list[nn.Module]] = {}
    for hook_name, hook in get_hook_storage(model).named_hooks():
        hook_type, op_name, port = decode_hook_name(hook_name)
        if hook_type == "post_hooks" and port == 0 and op_name in tensors:
            out.setdefault(op_name, []).append(hook)
    return out


def hooks_of_type(model: nn.Module, cls: type[nn.Module]) -> dict[str, nn.Module]:
    """The hook of class ``cls`` on each weight constant that has one."""
    found: dict[str, nn.Module] = {}
    for name, hooks in weight_hooks(model).items():
        for hook in hooks:
            if isinstance(hook, cls):
                found[name] = hook
    return found


def hook_storage_bits(hook: nn.Module) -> int | None:
    if isinstance(hook, WeightHook):
        return hook.storage_bits()
    if isinstance(hook, BaseQuantizer) and hook.is_enabled_quantization():
        return int(hook.num_bits)
    return None


@torch.no_grad()
def effective_weight(model: nn.Module, const_name: str, value: torch.Tensor) -> torch.Tensor:
    """The weight as the model computes with it: ``value`` passed through the constant's post-hooks."""
    out = value.detach()
    for hook in weight_hooks(model).get(const_name, []):
        out = hook(out)
    return out


@torch.no_grad()
def incoming_weight(model: nn.Module, const_name: str, value: torch.Tensor, hook: nn.Module) -> torch.Tensor:
    """The weight as ``hook`` receives it: ``value`` passed through the hooks that run before it."""
    out = value.detach()
    for other in weight_hooks(model).get(const_name, []):
        if other is hook:
            return out
        out = other(out)
    raise KeyError(f"hook is not registered on '{const_name}'")
