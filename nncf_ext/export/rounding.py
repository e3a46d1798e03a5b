"""Rounding a trained model's floats to float16 values, so that an archive stores them in 2 bytes each.

A compressed model keeps some tensors in float: BatchNorm parameters and statistics, biases, codebooks,
quantizer ranges. :func:`round_to_float16` rounds them (and every other float32 / float64 tensor of the
model) to the nearest float16 value in place, keeping their dtype. The model then computes with exactly the
values a Deep Compression archive stores (:func:`~nncf_ext.export.archive.save_archive` writes a tensor
that float16 holds exactly in float16), so what one measures on it, or on its OpenVINO IR, is what the
archive gives back. It is a deployment step, after training.
"""

from __future__ import annotations

import torch
from torch import nn

from nncf_ext.errors import ModelError
from nncf_ext.storage import HALF_HOLDS

HALF_MAX = torch.finfo(torch.float16).max


@torch.no_grad()
def round_to_float16(model: nn.Module) -> list[str]:
    """Round every float32 / float64 parameter and buffer of ``model`` (its compression hooks' included) to
    the nearest float16 value, in place. A tensor with a finite value beyond float16's range is left as it
    is (an archive then stores it in its own dtype). Returns the names of the tensors rounded."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"round_to_float16 expects a torch.nn.Module, got {type(model).__name__}")
    chosen: dict[int, tuple[str, torch.Tensor]] = {}  # one entry per tensor, however many names it has
    for name, tensor in model.state_dict(keep_vars=True).items():
        if tensor.dtype not in HALF_HOLDS or tensor.numel() == 0:
            continue
        finite = tensor[torch.isfinite(tensor)]
        if finite.numel() and float(finite.abs().max()) > HALF_MAX:
            continue
        chosen.setdefault(id(tensor), (name, tensor))
    for _, tensor in chosen.values():  # every tensor checked before the first is changed
        tensor.data.copy_(tensor.data.to(torch.float16))
    return [name for name, _ in chosen.values()]
