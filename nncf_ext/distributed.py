"""Keeping what one rank computes (k-means, ranges, masks) identical across DDP ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Copy every parameter and buffer of ``module`` from rank ``src`` to all ranks (no-op without DDP)."""
    if not is_distributed():
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.dtype == torch.bool:
            as_uint8 = tensor.to(torch.uint8)
            dist.broadcast(as_uint8, src)
            tensor.copy_(as_uint8.bool())
        else:
            dist.broadcast(tensor.data, src)
