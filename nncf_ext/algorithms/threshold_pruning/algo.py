"""Threshold pruning (Han et al. 2015; Saha et al. 2017): prune |w| below a scheduled threshold.

Criteria: ``absolute`` prunes ``|w| < t`` with t in weight units (the place-recognition paper's 0.001 ...
0.05); ``std`` prunes ``|w| < q * std(W)`` per layer (Han et al.; std of the layer's current weights);
``channel_std`` prunes ``|w| < q * std(W[c])`` per output channel c (a row of a linear layer, a filter of a
convolution), so each channel is judged against its own std, whatever its scale. That matters where the
rows differ in scale by design: a PCA-whitening layer's rows are scaled by 1 / sqrt(eigenvalue), and one
threshold for the layer would prune its high-variance components first.
Masks are recomputed at each ``epoch_step``. Without regrowth a mask only ever loses entries, and the
latent weights of pruned entries are held at zero, so nothing drifts back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nncf_ext.algorithms.base import AlgorithmConfig, CompressionAlgorithm, register_algorithm
from nncf_ext.algorithms.threshold_pruning.modules import ThresholdPruningMask
from nncf_ext.config_reader import ConfigReader
from nncf_ext.model import get_weight
from nncf_ext.schedulers import ConstantSchedule, Schedule, parse_schedule
from nncf_ext.scopes import WeightInfo

CRITERIA = ("absolute", "std", "channel_std")


@dataclass(frozen=True)
class ThresholdPruningConfig(AlgorithmConfig):
    criterion: str = "absolute"
    threshold: Schedule = field(default_factory=lambda: ConstantSchedule(0.0))
    regrowth: bool = False


@torch.no_grad()
def threshold_mask(weight: torch.Tensor, threshold: float, criterion: str) -> torch.Tensor:
    """Boolean keep-mask: True where ``|w| >= t`` (absolute), ``|w| >= t * std(w)`` (std) or
    ``|w| >= t * std(w[c])`` for the entries of output channel ``c = w[c, ...]`` (channel_std: dim 0 of the
    weight; a weight of fewer than two dimensions is one channel).

    The std criteria compare in float32. A weight (channel_std: a channel) of fewer than two elements has no
    standard deviation and is kept. A zero is below any positive threshold, so with ``t > 0`` it is pruned
    even where the std is 0 (an all-zero channel).
    """
    if criterion == "absolute":
        return weight.abs() >= threshold
    per_channel = criterion == "channel_std" and weight.dim() >= 2
    values = (weight.flatten(1) if per_channel else weight.reshape(1, -1)).float()
    if values.shape[1] < 2:
        return torch.ones_like(weight, dtype=torch.bool)
    keep = values.abs() >= threshold * values.std(dim=1, keepdim=True)
    if threshold > 0:
        keep &= values != 0
    return keep.reshape(weight.shape)


@register_algorithm
class ThresholdPruning(CompressionAlgorithm):
    name: ClassVar[str] = "threshold_pruning"
    role: ClassVar[str | None] = "pruning mask"
    config: ThresholdPruningConfig

    def __init__(self, config: ThresholdPruningConfig, path: str) -> None:
        super().__init__(config, path)
        self.masks: dict[str, ThresholdPruningMask] = {}
        self.threshold = 0.0

    @classmethod
    def parse_config(cls, r: ConfigReader) -> ThresholdPruningConfig:
        return ThresholdPruningConfig(
            criterion=r.string("criterion", "absolute", choices=CRITERIA),
            threshold=parse_schedule(r.raw("threshold"), r.sub("threshold"), minimum=0.0),
            regrowth=r.boolean("regrowth", False),
            **AlgorithmConfig.read_scopes(r),
        )

    @classmethod
    def config_to_dict(cls, config: AlgorithmConfig) -> dict[str, Any]:
        assert isinstance(config, ThresholdPruningConfig)
        return {
            "criterion": config.criterion,
            "threshold": config.threshold.to_config(),
            "regrowth": config.regrowth,
            **config.scopes_to_config(),
        }

    def make_hook(self, weight: WeightInfo) -> nn.Module:
        hook = ThresholdPruningMask(weight.shape, regrowth=self.config.regrowth)
        hook.to(get_weight(self._model, weight.name).device)
        self.masks[weight.name] = hook
        return hook

    @property
    def _model(self) -> nn.Module:
        assert self.model is not None, "algorithm is not applied"
        return self.model

    @torch.no_grad()
    def update_masks(self, threshold: float) -> None:
        self.threshold = threshold
        for name, hook in self.masks.items():
            weight = get_weight(self._model, name)
            current = weight if self.config.regrowth else torch.where(hook.mask, weight, 0.0)
            keep = threshold_mask(current, threshold, self.config.criterion)
            hook.mask.copy_(keep if self.config.regrowth else hook.mask & keep)
        self.step()

    def epoch_step(self, epoch: int) -> None:
        repeated = epoch == self.epoch
        super().epoch_step(epoch)
        if repeated:  # the masks of this epoch are set (on a resume, restored): pruning again would move
            self.step()  # the std threshold, measured on weights already pruned at it
            return
        self.update_masks(self.config.threshold(epoch))

    @torch.no_grad()
    def step(self) -> None:
        if self.config.regrowth:
            return
        for name, hook in self.masks.items():
            get_weight(self._model, name).masked_fill_(~hook.mask, 0.0)

    def summary(self) -> dict[str, float]:
        total = sum(h.mask.numel() for h in self.masks.values())
        pruned = sum(int((~h.mask).sum()) for h in self.masks.values())
        return {"threshold": self.threshold, "pruned_fraction": pruned / max(total, 1)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.threshold = float(state["threshold"])
