"""Hook module of threshold pruning: a boolean mask on a weight."""

from __future__ import annotations

from typing import Any

import torch

from nncf_ext.hooks import WeightHook


class ThresholdPruningMask(WeightHook):
    """Zeroes the masked-out entries of a weight.

    Without regrowth the gradient is masked too (``where`` passes no gradient to pruned entries), so a
    pruned weight receives zero update from the loss. With regrowth the gradient passes straight through
    (dynamic network surgery, Guo et al. 2016) so pruned weights keep learning and may come back.
    """

    mask: torch.Tensor

    def __init__(self, shape: tuple[int, ...] | list[int], regrowth: bool = False) -> None:
        super().__init__()
        self.regrowth = bool(regrowth)
        self.register_buffer("mask", torch.ones(tuple(shape), dtype=torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        masked = torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))
        if self.regrowth and weight.requires_grad:
            return weight + (masked - weight).detach()
        return masked

    def get_config(self) -> dict[str, Any]:
        return {"shape": list(self.mask.shape), "regrowth": self.regrowth}

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return f"shape={tuple(self.mask.shape)}, pruned={self.mask.numel() - kept}, regrowth={self.regrowth}"
