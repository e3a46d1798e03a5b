"""The contract of a compression algorithm and the registry that maps config names to algorithms.

An algorithm is parsed from its config entry (pure validation, nothing touched), then applied to a
wrapped model: it registers hook modules on the weights it selected. The pipeline then drives it with
``epoch_step`` (start of each epoch), ``step`` (after each optimizer step), ``loss`` / ``inject_gradients``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from nncf.torch.function_hook.wrapper import register_post_function_hook
from torch import nn

from nncf_ext.config_reader import ConfigReader, suggest
from nncf_ext.errors import ConfigError
from nncf_ext.scopes import Scope, WeightInfo, select_weights


@dataclass(frozen=True)
class AlgorithmConfig:
    """Options shared by every algorithm: which weights it touches."""

    target_scope: Scope = field(default_factory=Scope)
    ignored_scope: Scope = field(default_factory=Scope)

    @staticmethod
    def read_scopes(r: ConfigReader) -> dict[str, Scope]:
        return {
            "target_scope": Scope.from_config(r.raw("target_scope", {}), r.sub("target_scope")),
            "ignored_scope": Scope.from_config(r.raw("ignored_scope", {}), r.sub("ignored_scope")),
        }

    def scopes_to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.target_scope.is_empty:
            out["target_scope"] = self.target_scope.to_config()
        if not self.ignored_scope.is_empty:
            out["ignored_scope"] = self.ignored_scope.to_config()
        return out


class CompressionAlgorithm(ABC):
    """One entry of the ``compression`` list, applied to a wrapped model."""

    name: ClassVar[str]
    # what this algorithm puts on a weight ("codebook", "grid", "pruning mask"): at most one entry of each per
    # weight (a codebook snapped to a grid is cluster-preserving quantization; two grids or two masks on one
    # weight are a mistake; L1 penalties add up, a global one plus a stronger one on some layers)
    role: ClassVar[str | None] = None
    config: AlgorithmConfig

    def __init__(self, config: AlgorithmConfig, path: str) -> None:
        self.config = config
        self.path = path
        self.model: nn.Module | None = None
        self.weights: list[WeightInfo] = []
        self.epoch = -1

    # -- config ------------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def parse_config(cls, r: ConfigReader) -> AlgorithmConfig:
        """Read and validate this algorithm's options (the ``algorithm`` key is already consumed)."""

    @classmethod
    @abstractmethod
    def config_to_dict(cls, config: AlgorithmConfig) -> dict[str, Any]:
        """The JSON form of ``config``; parsing it again gives an equal config."""

    @classmethod
    def check_composition(
        cls, config: AlgorithmConfig, previous: list[tuple[str, AlgorithmConfig]], path: str
    ) -> None:
        """Validate this entry against the entries before it in the ``compression`` list."""
        return

    # -- application -------------------------------------------------------------------------------------
    def select(self, weights: list[WeightInfo], others: list[WeightInfo] | None = None) -> list[WeightInfo]:
        """The weights this algorithm compresses; ``others`` (parameters of no weighted operation) only by
        exact name in the target scope."""
        return select_weights(
            weights, self.config.target_scope, self.config.ignored_scope, self.path, others or ()
        )

    def validate(self, model: nn.Module, weights: list[WeightInfo]) -> None:  # noqa: B027
        """Checks that need the model; called for every algorithm before any hook is placed."""

    def check_selection(  # noqa: B027
        self, weights: list[WeightInfo], entries: list[tuple[CompressionAlgorithm, list[WeightInfo]]]
    ) -> None:
        """Checks against the other entries on the same weights: ``entries`` are all algorithms of the config
        with the weights each selected; called before any hook is placed."""

    def apply(self, model: nn.Module, weights: list[WeightInfo], example_input: Any) -> None:
        """Place this algorithm's hooks. The default places :meth:`make_hook` on each weight."""
        self.model = model
        self.weights = weights
        self.example_input = example_input
        for w in weights:
            hook = self.make_hook(w)
            if hook is not None:
                register_post_function_hook(model, op_name=w.name, port_id=0, hook=hook)

    def make_hook(self, weight: WeightInfo) -> nn.Module | None:
        return None

    # -- training loop -----------------------------------------------------------------------------------
    def epoch_step(self, epoch: int) -> None:
        self.epoch = epoch

    def step(self) -> None:  # noqa: B027
        """Called after each optimizer step."""

    def loss(self) -> torch.Tensor | None:
        return None

    def inject_gradients(self) -> None:  # noqa: B027
        """Add d(loss())/dW to the gradients, for loops that cannot change the loss."""

    def summary(self) -> dict[str, float]:
        """Current schedule values, for logging."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])


ALGORITHMS: dict[str, type[CompressionAlgorithm]] = {}


def register_algorithm(cls: type[CompressionAlgorithm]) -> type[CompressionAlgorithm]:
    ALGORITHMS[cls.name] = cls
    return cls


def algorithm_class(name: Any, path: str) -> type[CompressionAlgorithm]:
    if not isinstance(name, str):
        raise ConfigError(path, f"expected an algorithm name, got {name!r}")
    if name not in ALGORITHMS:
        raise ConfigError(
            path,
            f"unknown algorithm '{name}'{suggest(name, sorted(ALGORITHMS))}; known: {sorted(ALGORITHMS)}",
        )
    return ALGORITHMS[name]
