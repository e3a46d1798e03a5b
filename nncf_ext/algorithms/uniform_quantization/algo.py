"""Uniform n-bit quantization of weights (and optionally activations) with NNCF's own fake quantizers.

Weight quantizers are post-hooks on the weight constants (where NNCF's ``strip`` looks for them, so
8- and 4-bit layers strip into int8 / int4 weights); activation quantizers are pre-hooks on the input of
each targeted operation. Every quantizer has exactly ``2 ** bits`` levels and trainable ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any, ClassVar

import torch
from nncf.torch.function_hook.wrapper import register_pre_function_hook
from nncf.torch.quantization.layers import BaseQuantizer
from torch import nn

from nncf_ext.algorithms.base import AlgorithmConfig, CompressionAlgorithm, register_algorithm
from nncf_ext.algorithms.bits import BitsPerScope
from nncf_ext.algorithms.uniform_quantization.observers import collect_input_ranges, observe_inputs
from nncf_ext.config_reader import ConfigReader
from nncf_ext.distributed import broadcast_module
from nncf_ext.errors import ModelError
from nncf_ext.hooks import incoming_weight
from nncf_ext.model import example_like_model, get_weight
from nncf_ext.quantizers import (
    MODES,
    init_weight_range,
    make_quantizer,
    make_weight_quantizer,
    scale_range_gradients,
    set_range,
)
from nncf_ext.scopes import WeightInfo

INITS = ("minmax", "mse")


@dataclass(frozen=True)
class WeightQuantizationConfig:
    bits: int = 8
    mode: str = "symmetric"
    per_channel: bool = True
    init: str = "mse"
    bits_per_scope: BitsPerScope = field(default_factory=BitsPerScope)


@dataclass(frozen=True)
class ActivationQuantizationConfig:
    bits: int = 8
    mode: str = "symmetric"


@dataclass(frozen=True)
class UniformQuantizationConfig(AlgorithmConfig):
    weights: WeightQuantizationConfig = field(default_factory=WeightQuantizationConfig)
    activations: ActivationQuantizationConfig | None = None
    trainable_ranges: bool = True
    lsq_gradient_scale: bool = False
    start_epoch: int = 0


@register_algorithm
class UniformQuantization(CompressionAlgorithm):
    name: ClassVar[str] = "uniform_quantization"
    role: ClassVar[str | None] = "grid"
    config: UniformQuantizationConfig

    def __init__(self, config: UniformQuantizationConfig, path: str) -> None:
        super().__init__(config, path)
        self.weight_quantizers: dict[str, BaseQuantizer] = {}
        self.activation_quantizers: dict[str, BaseQuantizer] = {}
        self.activation_ports: dict[str, int] = {}  # op -> the input port its activation quantizer is on
        self.initialized = False

    @classmethod
    def parse_config(cls, r: ConfigReader) -> UniformQuantizationConfig:
        w = r.reader("weights", {})
        weights = WeightQuantizationConfig(
            bits=w.integer("bits", 8, minimum=2, maximum=8),
            mode=w.string("mode", "symmetric", choices=MODES),
            per_channel=w.boolean("per_channel", True),
            init=w.string("init", "mse", choices=INITS),
            bits_per_scope=BitsPerScope.read(w, "bits_per_scope", 2, 8),
        )
        w.finish()
        activations = None
        if r.raw("activations", None) is not None:
            a = r.reader("activations")
            activations = ActivationQuantizationConfig(
                bits=a.integer("bits", 8, minimum=2, maximum=8),
                mode=a.string("mode", "symmetric", choices=MODES),
            )
            a.finish()
        return UniformQuantizationConfig(
            weights=weights,
            activations=activations,
            trainable_ranges=r.boolean("trainable_ranges", True),
            lsq_gradient_scale=r.boolean("lsq_gradient_scale", False),
            start_epoch=r.integer("start_epoch", 0, minimum=0),
            **AlgorithmConfig.read_scopes(r),
        )

    @classmethod
    def config_to_dict(cls, config: AlgorithmConfig) -> dict[str, Any]:
        assert isinstance(config, UniformQuantizationConfig)
        w = config.weights
        weights: dict[str, Any] = {
            "bits": w.bits,
            "mode": w.mode,
            "per_channel": w.per_channel,
            "init": w.init,
        }
        if w.bits_per_scope:
            weights["bits_per_scope"] = w.bits_per_scope.to_config()
        out: dict[str, Any] = {
            "weights": weights,
            "trainable_ranges": config.trainable_ranges,
            "lsq_gradient_scale": config.lsq_gradient_scale,
            "start_epoch": config.start_epoch,
            **config.scopes_to_config(),
        }
        if config.activations is not None:
            out["activations"] = {"bits": config.activations.bits, "mode": config.activations.mode}
        return out

    def validate(self, model: nn.Module, weights: list[WeightInfo]) -> None:
        self.config.weights.bits_per_scope.check_matches(weights, f"{self.path}.weights.bits_per_scope")

    def make_hook(self, weight: WeightInfo) -> nn.Module:
        assert self.model is not None
        w = self.config.weights
        tensor = get_weight(self.model, weight.name)
        quantizer = make_weight_quantizer(
            tensor, w.bits_per_scope.bits_for(weight, w.bits), w.mode, w.per_channel
        )
        quantizer.to(tensor.device)
        self._disable(quantizer)
        if self.config.lsq_gradient_scale:
            per_scale = tensor.numel() // max(prod(quantizer.scale_shape), 1)
            scale_range_gradients(quantizer, per_scale)
        self.weight_quantizers[weight.name] = quantizer
        return quantizer

    def apply(self, model: nn.Module, weights: list[WeightInfo], example_input: Any) -> None:
        act = self.config.activations
        if act is None:
            super().apply(model, weights, example_input)
            return
        # the float activation input of weighted operations only (not the weight's port, not an embedding's
        # indices); a parameter used elementwise (NetVLAD centroids) brings none
        ports = {
            op: port
            for w in weights
            if w.weighted
            for op, port in zip(w.op_names, w.activation_ports, strict=True)
            if port is not None
        }
        observed = observe_inputs(model, ports, example_input)
        for op, obs in observed.items():  # checked before any hook is added
            if not (torch.isfinite(obs.low) and torch.isfinite(obs.high)):  # NaN / inf, or never reached
                raise ModelError(
                    f"{self.path}.activations: the example input gives the input of {op} the range "
                    f"[{float(obs.low):g}, {float(obs.high):g}]; activation ranges start from the example "
                    "input's activations: give a representative batch of finite inputs"
                )
            if not torch.maximum(obs.low.abs(), obs.high.abs()) > 0:  # the range set_range would make: 1e-8
                raise ModelError(
                    f"{self.path}.activations: the example input makes the input of {op} all zeros; "
                    "activation ranges start from the example's activations: give a representative batch"
                )
        super().apply(model, weights, example_input)
        self.activation_ports = ports
        device = get_weight(model, weights[0].name).device
        sizes = {op: obs.per_sample for op, obs in observed.items()} if self.config.lsq_gradient_scale else {}
        for op, port in ports.items():
            quantizer = make_quantizer(act.bits, act.mode, (1,), signed=None, is_weights=False).to(device)
            self._disable(quantizer)
            if op in sizes:
                scale_range_gradients(quantizer, sizes[op])
            register_pre_function_hook(model, op_name=op, port_id=port, hook=quantizer)
            self.activation_quantizers[op] = quantizer

    def _disable(self, quantizer: BaseQuantizer) -> None:
        """Quantization off, but trainable ranges keep ``requires_grad`` so that DDP, which registers the
        parameters to synchronise when it wraps the model, synchronises them once quantization starts."""
        quantizer.disable_quantization()
        if self.config.trainable_ranges:
            quantizer.enable_gradients()

    @torch.no_grad()
    def initialize(self) -> None:
        """Set initial ranges from the current weights and the example input, then switch quantizers on."""
        assert self.model is not None
        for name, quantizer in self.weight_quantizers.items():
            weight = incoming_weight(self.model, name, get_weight(self.model, name), quantizer)
            init_weight_range(quantizer, weight, self.config.weights.init)
        if self.activation_quantizers:
            example = example_like_model(self.model, self.example_input)
            ranges = collect_input_ranges(self.model, self.activation_ports, example)
            for op, quantizer in self.activation_quantizers.items():
                set_range(quantizer, *ranges[op])
        for quantizer in (*self.weight_quantizers.values(), *self.activation_quantizers.values()):
            broadcast_module(quantizer)
            quantizer.enable_quantization()
            if not self.config.trainable_ranges:
                quantizer.disable_gradients()
        self.initialized = True

    def epoch_step(self, epoch: int) -> None:
        super().epoch_step(epoch)
        if epoch >= self.config.start_epoch and not self.initialized:
            self.initialize()

    def summary(self) -> dict[str, float]:
        on = [q for q in self.weight_quantizers.values() if q.is_enabled_quantization()]
        return {"mean_weight_bits": sum(q.num_bits for q in on) / len(on) if on else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "initialized": self.initialized}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state["initialized"], bool):
            raise ValueError(f"'initialized' must be true or false, got {state['initialized']!r}")
        super().load_state_dict(state)
        self.initialized = state["initialized"]
        for quantizer in (*self.weight_quantizers.values(), *self.activation_quantizers.values()):
            if self.initialized:
                quantizer.enable_quantization()
                if not self.config.trainable_ranges:
                    quantizer.disable_gradients()
            else:
                self._disable(quantizer)
