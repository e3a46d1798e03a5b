"""L1 sparsification (Saha et al. 2017): ``J = Loss + lambda * sum |W|`` over the target weights.

Use it either as a loss term (``loss = task_loss + pipeline.loss()``) or by gradient injection after
``backward()`` (``pipeline.inject_gradients()``, for loops such as a Lightning callback that cannot change
the loss). Both add ``lambda * sign(W)`` to the gradient of each target weight.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from nncf_ext.algorithms.base import AlgorithmConfig, CompressionAlgorithm, register_algorithm
from nncf_ext.config_reader import ConfigReader
from nncf_ext.model import get_weight
from nncf_ext.schedulers import ConstantSchedule, Schedule, parse_schedule


@dataclass(frozen=True)
class L1SparsityConfig(AlgorithmConfig):
    strength: Schedule = field(default_factory=lambda: ConstantSchedule(0.0))
    reduction: str = "sum"


@register_algorithm
class L1Sparsity(CompressionAlgorithm):
    name: ClassVar[str] = "l1_sparsity"
    config: L1SparsityConfig

    def __init__(self, config: L1SparsityConfig, path: str) -> None:
        super().__init__(config, path)
        self.strength = 0.0

    @classmethod
    def parse_config(cls, r: ConfigReader) -> L1SparsityConfig:
        return L1SparsityConfig(
            strength=parse_schedule(r.raw("lambda"), r.sub("lambda"), minimum=0.0),
            reduction=r.string("reduction", "sum", choices=("sum", "mean")),
            **AlgorithmConfig.read_scopes(r),
        )

    @classmethod
    def config_to_dict(cls, config: AlgorithmConfig) -> dict[str, Any]:
        assert isinstance(config, L1SparsityConfig)
        return {
            "lambda": config.strength.to_config(),
            "reduction": config.reduction,
            **config.scopes_to_config(),
        }

    def _params(self) -> list[torch.Tensor]:
        assert self.model is not None, "algorithm is not applied"
        return [get_weight(self.model, w.name) for w in self.weights]

    def _scale(self) -> float:
        if self.config.reduction == "mean":
            return self.strength / max(sum(w.numel for w in self.weights), 1)
        return self.strength

    def epoch_step(self, epoch: int) -> None:
        super().epoch_step(epoch)
        self.strength = self.config.strength(epoch)

    def loss(self) -> torch.Tensor | None:
        params = self._params()
        if self.strength == 0.0:
            return None
        # summed in float32: the L1 norm of an fp16 layer overflows fp16 (65504) at a few million weights
        return self._scale() * torch.stack([p.abs().sum(dtype=torch.float32) for p in params]).sum()

    @torch.no_grad()
    def inject_gradients(self) -> None:
        scale = self._scale()
        if scale == 0.0:
            return
        for p in self._params():
            if not p.requires_grad:
                continue
            g = torch.sign(p).mul_(scale)
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)

    def summary(self) -> dict[str, float]:
        return {"lambda": self.strength}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "strength": self.strength}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.strength = float(state["strength"])
