"""k-means trained quantization (Han et al., Deep Compression, 2016; Saha et al. 2017).

At ``start_epoch`` each target weight is clustered into ``2 ** bits`` centroids by 1-D k-means; from then
on the layer computes with ``codebook[index]`` and the centroids train. With ``preserve_sparsity`` the
weights pruned by earlier algorithms map to a fixed zero centroid and stay exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nncf_ext.algorithms.base import AlgorithmConfig, CompressionAlgorithm, register_algorithm
from nncf_ext.algorithms.bits import BitsPerScope
from nncf_ext.algorithms.kmeans_quantization.init import INITIALIZERS
from nncf_ext.algorithms.kmeans_quantization.kmeans import kmeans_1d, nearest_centroid
from nncf_ext.algorithms.kmeans_quantization.modules import KMeansQuantizer
from nncf_ext.config_reader import ConfigReader
from nncf_ext.distributed import broadcast_module
from nncf_ext.errors import ConfigError, ModelError
from nncf_ext.hooks import incoming_weight
from nncf_ext.model import get_weight
from nncf_ext.schedulers import Schedule
from nncf_ext.scopes import WeightInfo


@dataclass(frozen=True)
class KMeansQuantizationConfig(AlgorithmConfig):
    bits: int = 8
    bits_per_scope: BitsPerScope = field(default_factory=BitsPerScope)
    init: str = "linear"
    preserve_sparsity: bool = True
    start_epoch: int = 0
    assignment: str = "frozen"
    reassign_interval: int = 0
    gradient_aggregation: str = "sum"
    kmeans_iterations: int = 100
    seed: int = 0

    def bits_for(self, weight: WeightInfo) -> int:
        return self.bits_per_scope.bits_for(weight, self.bits)


@register_algorithm
class KMeansQuantization(CompressionAlgorithm):
    name: ClassVar[str] = "kmeans_quantization"
    role: ClassVar[str | None] = "codebook"
    config: KMeansQuantizationConfig

    def __init__(self, config: KMeansQuantizationConfig, path: str) -> None:
        super().__init__(config, path)
        self.quantizers: dict[str, KMeansQuantizer] = {}
        self._steps = 0

    @classmethod
    def parse_config(cls, r: ConfigReader) -> KMeansQuantizationConfig:
        assignment = r.string("assignment", "frozen", choices=("frozen", "reassign"))
        config = KMeansQuantizationConfig(
            bits=r.integer("bits", 8, minimum=1, maximum=8),
            bits_per_scope=BitsPerScope.read(r, "bits_per_scope", 1, 8),
            init=r.string("init", "linear", choices=tuple(INITIALIZERS)),
            preserve_sparsity=r.boolean("preserve_sparsity", True),
            start_epoch=r.integer("start_epoch", 0, minimum=0),
            assignment=assignment,
            reassign_interval=r.integer("reassign_interval", 0, minimum=0),
            gradient_aggregation=r.string("gradient_aggregation", "sum", choices=("sum", "mean")),
            kmeans_iterations=r.integer("kmeans_iterations", 100, minimum=1),
            seed=r.integer("seed", 0, minimum=0, maximum=2**63 - 1),
            **AlgorithmConfig.read_scopes(r),
        )
        if config.reassign_interval and assignment != "reassign":
            raise ConfigError(r.sub("reassign_interval"), 'only applies with "assignment": "reassign"')
        if config.preserve_sparsity and min([config.bits, *config.bits_per_scope.values]) < 2:
            raise ConfigError(
                r.sub("bits"), "preserve_sparsity needs at least 2 bits (a zero and one centroid)"
            )
        return config

    @classmethod
    def config_to_dict(cls, config: AlgorithmConfig) -> dict[str, Any]:
        assert isinstance(config, KMeansQuantizationConfig)
        out: dict[str, Any] = {
            "bits": config.bits,
            "init": config.init,
            "preserve_sparsity": config.preserve_sparsity,
            "start_epoch": config.start_epoch,
            "assignment": config.assignment,
            "gradient_aggregation": config.gradient_aggregation,
            "kmeans_iterations": config.kmeans_iterations,
            "seed": config.seed,
            **config.scopes_to_config(),
        }
        if config.bits_per_scope:
            out["bits_per_scope"] = config.bits_per_scope.to_config()
        if config.reassign_interval:
            out["reassign_interval"] = config.reassign_interval
        return out

    @classmethod
    def check_composition(
        cls, config: AlgorithmConfig, previous: list[tuple[str, AlgorithmConfig]], path: str
    ) -> None:
        """Clustering that preserves sparsity must start once earlier pruning has stopped changing masks (L1
        on the same weights: :meth:`check_selection`, once the weights are known)."""
        assert isinstance(config, KMeansQuantizationConfig)
        if not config.preserve_sparsity:
            return
        for i, (name, other) in enumerate(previous):
            final = getattr(getattr(other, "threshold", None), "final_epoch", None)
            if name == "threshold_pruning" and final is not None and final > config.start_epoch:
                raise ConfigError(
                    f"{path}.start_epoch",
                    f"clustering starts at epoch {config.start_epoch} but compression[{i}] still changes its "
                    f"threshold until epoch {final}; start clustering at epoch {final} or later",
                )

    def validate(self, model: nn.Module, weights: list[WeightInfo]) -> None:
        self.config.bits_per_scope.check_matches(weights, f"{self.path}.bits_per_scope")

    def check_selection(
        self, weights: list[WeightInfo], entries: list[tuple[CompressionAlgorithm, list[WeightInfo]]]
    ) -> None:
        """Sparsity-preserving clustering fixes a weight's zeros when it starts: L1 on the same weight must be
        off by then (the weights it pushes under the pruning threshold afterwards would be masked yet keep
        their centroid)."""
        start = self.config.start_epoch
        if not self.config.preserve_sparsity:
            return
        for other, other_weights in entries:
            strength = getattr(other.config, "strength", None)
            shared = {w.name for w in other_weights} & {w.name for w in weights}
            if other.name != "l1_sparsity" or not isinstance(strength, Schedule) or not shared:
                continue
            epoch = strength.first_nonzero_from(start)
            if epoch is not None:
                raise ConfigError(
                    f"{self.path}.start_epoch",
                    f"sparsity-preserving clustering of {sorted(shared)} starts at epoch {start} but "
                    f"{other.path} (l1_sparsity) has lambda {strength(epoch):g} at epoch {epoch}; set lambda "
                    f"to 0 from epoch {start}",
                )

    def make_hook(self, weight: WeightInfo) -> nn.Module:
        assert self.model is not None
        hook = KMeansQuantizer(
            weight.shape,
            self.config.bits_for(weight),
            assignment=self.config.assignment,
            zero_centroid=self.config.preserve_sparsity,
            reduction=self.config.gradient_aggregation,
        ).to(get_weight(self.model, weight.name).device)
        self.quantizers[weight.name] = hook
        return hook

    def _incoming(self, name: str, hook: KMeansQuantizer) -> torch.Tensor:
        assert self.model is not None
        return incoming_weight(self.model, name, get_weight(self.model, name), hook)

    @torch.no_grad()
    def cluster(self) -> None:
        """Run k-means on every target weight and activate the quantizers."""
        for name, hook in self.quantizers.items():
            weight = self._incoming(name, hook).float().cpu()  # k-means on the CPU, wherever the model is
            if self.config.preserve_sparsity:
                nonzero = weight != 0
                codebook = torch.zeros(hook.k)
                index = torch.zeros(weight.shape, dtype=torch.long)
                if bool(nonzero.any()):
                    result = kmeans_1d(
                        weight[nonzero],
                        hook.k - 1,
                        self.config.init,
                        max_iter=self.config.kmeans_iterations,
                        seed=self.config.seed,
                    )
                    codebook[1:] = result.centroids
                    index[nonzero] = result.index.long() + 1
            elif weight.numel() == 0:
                codebook, index = torch.zeros(hook.k), torch.zeros(weight.shape, dtype=torch.long)
            else:
                result = kmeans_1d(
                    weight,
                    hook.k,
                    self.config.init,
                    max_iter=self.config.kmeans_iterations,
                    seed=self.config.seed,
                )
                codebook, index = result.centroids, result.index
            hook.set_clusters(codebook, index)
            broadcast_module(hook)  # under DDP every rank takes rank 0's clusters, whatever its k-means did
            hook.invalidate()

    @torch.no_grad()
    def reassign(self) -> None:
        """Move every weight to its nearest trained centroid (``reassign`` policy)."""
        for name, hook in self.quantizers.items():
            weight = self._incoming(name, hook).float().cpu()
            codebook = hook.effective_codebook().detach().float().cpu()
            # with preserve_sparsity, zeros keep the fixed zero centroid and the other weights choose among
            # the trained ones, as k-means placed them: reassigning never prunes, and never revives a weight
            # that was zero when clustered (its latent value moves under the straight-through gradient)
            first = 1 if self.config.preserve_sparsity else 0
            trained = codebook[first:]
            order = torch.argsort(trained)
            index = order[nearest_centroid(weight.reshape(-1), trained[order])].reshape(weight.shape) + first
            if self.config.preserve_sparsity:
                zero = (weight == 0) | (hook.index.cpu() == 0)
                index = torch.where(zero, torch.zeros_like(index), index)
            hook.index.copy_(index.to(hook.index.dtype))
            hook.invalidate()

    def epoch_step(self, epoch: int) -> None:
        repeated = epoch == self.epoch
        super().epoch_step(epoch)
        if epoch < self.config.start_epoch:
            return
        if not all(bool(h.active) for h in self.quantizers.values()):
            self.cluster()
        elif self.config.assignment == "reassign" and not repeated:  # a resume into the same epoch keeps
            self.reassign()  # the indices it saved

    def step(self) -> None:
        for name, hook in self.quantizers.items():
            if bool(hook.active) and not bool(torch.isfinite(hook.codebook).all()):
                raise ModelError(
                    f"the codebook of '{name}' became NaN or Inf at epoch {self.epoch}; "
                    "lower the learning rate of the centroids"
                )
        self._steps += 1
        interval = self.config.reassign_interval
        if interval and self._steps % interval == 0 and all(bool(h.active) for h in self.quantizers.values()):
            self.reassign()

    def summary(self) -> dict[str, float]:
        active = [h for h in self.quantizers.values() if bool(h.active)]
        return {
            "clustered_layers": float(len(active)),
            "mean_bits": sum(h.bits for h in active) / len(active) if active else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self._steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        steps = state["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"'steps' must be a non-negative integer, got {steps!r}")
        super().load_state_dict(state)
        self._steps = steps
